// Package shimproto owns the shim's framing of the admission protocol, shared by
// the shim (client side) and the agent (server side), plus the two small
// contracts between them that must be cheap to read on every git process:
// the shim configuration file (shim.conf) and socket path resolution.
//
// # Framing
//
// The agent serves gRPC and this framing on one Unix socket and tells them
// apart by the first byte: gRPC's HTTP/2 preface starts with 'P', ours with
// 'S'. A client connects and writes [Magic], then one frame holding a
// sluice.v1.ClientMsg with an AdmitRequest. The server answers with frames
// holding sluice.v1.ServerMsg: zero or more Queued, then exactly one Admitted
// or Rejected. The first of those answers must arrive within
// [FirstReplyTimeout] (a queued request gets a Queued at once); after a Queued
// the client waits up to its own admission deadline. After Admitted the
// client keeps the connection open while git runs — the open connection IS
// the lease — then writes a ClientMsg with Finished and closes. A connection
// closed without Finished (the shim was killed) releases the lease too.
//
// A frame is a 4-byte big-endian length followed by that many bytes of
// protobuf encoding; frames larger than [MaxFrame] are errors. Messages are
// encoded and decoded by hand (this package links no protobuf runtime, so the
// shim starts fast) and are byte-compatible with proto.Marshal / proto.Unmarshal
// of the agent/admitpb types: proto3 implicit presence (zero values are not
// written), int32/int64 as two's-complement varints, unknown fields skipped.
// String fields are made valid UTF-8 (invalid bytes become U+FFFD) when
// encoded, because proto.Unmarshal rejects invalid UTF-8 in proto3 strings;
// AdmitRequest.Repo is bytes and goes through untouched.
//
// The client side ([Dial], [Conn]) uses raw syscalls, not package net, which
// costs the shim about a millisecond of start-up.
package shimproto
