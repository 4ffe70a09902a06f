package shimproto

import (
	"errors"
	"unicode/utf8"
)

// AdmitRequest mirrors sluice.v1.AdmitRequest.
type AdmitRequest struct {
	Command       string // field 1: basename the shim was run as
	Subcommand    string // field 2
	Repo          []byte // field 3: absolute, cleaned path; bytes, need not be UTF-8
	RemoteIP      string // field 4
	User          string // field 5
	CorrelationID string // field 6
	Hook          bool   // field 7
	WorkerPID     int32  // field 8
	CanExec       bool   // field 9
	// QueuedSince is when the request first reached an agent (Unix ns),
	// sent again after an agent restart (field 10); 0: now.
	QueuedSince int64
}

// Finished mirrors sluice.v1.Finished.
type Finished struct {
	ExitCode   int32 // field 1: -1 when killed by a signal
	Signal     int32 // field 2: 0 when exited
	UserUsec   int64 // field 3
	SystemUsec int64 // field 4
	MaxRSSKiB  int64 // field 5
	RealUsec   int64 // field 6
}

// Queued mirrors sluice.v1.Queued.
type Queued struct {
	Limit       string // field 1
	Position    int32  // field 2: 1 = next
	QueueLength int32  // field 3
}

// Reject reasons (values of admitpb.RejectReason; a test checks they agree).
const (
	ReasonMaxSize     int32 = 1
	ReasonMaxTime     int32 = 2
	ReasonInvalid     int32 = 3
	ReasonUnavailable int32 = 4 // the agent cannot admit now: the shim applies fail_mode
	ReasonPermission  int32 = 5
)

// Reply is the final answer to an AdmitRequest: sluice.v1.Admitted when
// Admitted is true (LeaseID, Limit, QueuedUsec), sluice.v1.Rejected otherwise
// (Reason, Message, Limit).
type Reply struct {
	Admitted   bool
	LeaseID    string // Admitted field 1
	Limit      string // Admitted field 2, Rejected field 3
	QueuedUsec int64  // Admitted field 3
	Exec       bool   // Admitted field 4: exec git in place, send no Finished
	Reason     int32  // Rejected field 1: an admitpb.RejectReason value
	Message    string // Rejected field 2: one line starting "sluice: "
}

// ClientKind says which oneof member a ClientMsg holds.
type ClientKind uint8

// ClientMsg oneof members.
const (
	ClientNone     ClientKind = iota // empty or only unknown fields
	ClientAdmit                      // field 1
	ClientFinished                   // field 2
)

// ClientMsg mirrors sluice.v1.ClientMsg; Kind selects the member in use.
type ClientMsg struct {
	Kind     ClientKind
	Admit    AdmitRequest
	Finished Finished
}

// ServerKind says which oneof member a ServerMsg holds.
type ServerKind uint8

// ServerMsg oneof members.
const (
	ServerNone     ServerKind = iota // empty or only unknown fields
	ServerQueued                     // field 1
	ServerAdmitted                   // field 2
	ServerRejected                   // field 3
)

// ServerMsg mirrors sluice.v1.ServerMsg. Kind selects the member in use:
// Queued for ServerQueued, Reply for ServerAdmitted and ServerRejected
// (Reply.Admitted is set accordingly).
type ServerMsg struct {
	Kind   ServerKind
	Queued Queued
	Reply  Reply
}

// Protobuf wire types.
const (
	wireVarint = 0
	wireI64    = 1
	wireLen    = 2
	wireSGroup = 3
	wireEGroup = 4
	wireI32    = 5
)

// maxGroupDepth bounds nested unknown groups while skipping them.
const maxGroupDepth = 64

var (
	errTruncated   = errors.New("wire: truncated message")
	errVarint      = errors.New("wire: bad varint")
	errFieldNumber = errors.New("wire: bad field number")
	errWireType    = errors.New("wire: bad wire type")
	errGroup       = errors.New("wire: bad group")
)

// --- encoding ---

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendTag(b []byte, num int, typ int) []byte {
	return appendVarint(b, uint64(num)<<3|uint64(typ))
}

func appendInt(b []byte, num int, v int64) []byte {
	if v == 0 {
		return b
	}
	b = appendTag(b, num, wireVarint)
	return appendVarint(b, uint64(v)) // negative int32 too: sign-extended, 10 bytes
}

func appendBool(b []byte, num int, v bool) []byte {
	if !v {
		return b
	}
	return append(appendTag(b, num, wireVarint), 1)
}

func appendString(b []byte, num int, s string) []byte {
	if s == "" {
		return b
	}
	if !utf8.ValidString(s) {
		s = toValidUTF8(s)
	}
	b = appendTag(b, num, wireLen)
	b = appendVarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, num int, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = appendTag(b, num, wireLen)
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

// toValidUTF8 replaces each run of invalid bytes with U+FFFD (as
// strings.ToValidUTF8 does; kept here so the rule is stated in one place).
func toValidUTF8(s string) string {
	out := make([]byte, 0, len(s)+8)
	bad := false
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			if !bad {
				out = utf8.AppendRune(out, utf8.RuneError)
				bad = true
			}
			i++
			continue
		}
		bad = false
		out = append(out, s[i:i+size]...)
		i += size
	}
	return string(out)
}

// appendSub appends field num holding a sub-message built by enc. The
// length is not known in advance, so the body is built after a one-byte
// length placeholder and moved when the length needs more bytes.
func appendSub(b []byte, num int, enc func([]byte) []byte) []byte {
	b = appendTag(b, num, wireLen)
	start := len(b)
	b = append(b, 0)
	b = enc(b)
	n := len(b) - start - 1
	if n < 0x80 {
		b[start] = byte(n)
		return b
	}
	var lenBuf [10]byte
	l := appendVarint(lenBuf[:0], uint64(n))
	b = append(b, l[1:]...) // grow by len(l)-1
	copy(b[start+len(l):], b[start+1:start+1+n])
	copy(b[start:], l)
	return b
}

func (r *AdmitRequest) appendTo(b []byte) []byte {
	b = appendString(b, 1, r.Command)
	b = appendString(b, 2, r.Subcommand)
	b = appendBytes(b, 3, r.Repo)
	b = appendString(b, 4, r.RemoteIP)
	b = appendString(b, 5, r.User)
	b = appendString(b, 6, r.CorrelationID)
	b = appendBool(b, 7, r.Hook)
	b = appendInt(b, 8, int64(r.WorkerPID))
	b = appendBool(b, 9, r.CanExec)
	b = appendInt(b, 10, r.QueuedSince)
	return b
}

func (f *Finished) appendTo(b []byte) []byte {
	b = appendInt(b, 1, int64(f.ExitCode))
	b = appendInt(b, 2, int64(f.Signal))
	b = appendInt(b, 3, f.UserUsec)
	b = appendInt(b, 4, f.SystemUsec)
	b = appendInt(b, 5, f.MaxRSSKiB)
	b = appendInt(b, 6, f.RealUsec)
	return b
}

// AppendAdmit appends the encoding of ClientMsg{admit: r} (no frame header).
func AppendAdmit(dst []byte, r *AdmitRequest) []byte {
	return appendSub(dst, 1, r.appendTo)
}

// AppendFinished appends the encoding of ClientMsg{finished: f} (no frame header).
func AppendFinished(dst []byte, f *Finished) []byte {
	return appendSub(dst, 2, f.appendTo)
}

// AppendClientMsg appends the encoding of m; ClientNone encodes as empty.
func AppendClientMsg(dst []byte, m *ClientMsg) []byte {
	switch m.Kind {
	case ClientAdmit:
		return AppendAdmit(dst, &m.Admit)
	case ClientFinished:
		return AppendFinished(dst, &m.Finished)
	}
	return dst
}

// AppendServerMsg appends the encoding of m; ServerNone encodes as empty.
// The agent uses proto.Marshal; this exists for tests and fake servers.
func AppendServerMsg(dst []byte, m *ServerMsg) []byte {
	switch m.Kind {
	case ServerQueued:
		q := &m.Queued
		return appendSub(dst, 1, func(b []byte) []byte {
			b = appendString(b, 1, q.Limit)
			b = appendInt(b, 2, int64(q.Position))
			return appendInt(b, 3, int64(q.QueueLength))
		})
	case ServerAdmitted:
		r := &m.Reply
		return appendSub(dst, 2, func(b []byte) []byte {
			b = appendString(b, 1, r.LeaseID)
			b = appendString(b, 2, r.Limit)
			b = appendInt(b, 3, r.QueuedUsec)
			return appendBool(b, 4, r.Exec)
		})
	case ServerRejected:
		r := &m.Reply
		return appendSub(dst, 3, func(b []byte) []byte {
			b = appendInt(b, 1, int64(r.Reason))
			b = appendString(b, 2, r.Message)
			return appendString(b, 3, r.Limit)
		})
	}
	return dst
}

// --- decoding ---

// decoder walks the fields of one message.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) varint() uint64 {
	var v uint64
	for i := 0; i < 10; i++ {
		if i >= len(d.b) {
			d.fail(errTruncated)
			return 0
		}
		c := d.b[i]
		if i == 9 && c > 1 {
			d.fail(errVarint)
			return 0
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			d.b = d.b[i+1:]
			return v
		}
	}
	d.fail(errVarint)
	return 0
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

// next returns the next field's number and wire type; ok is false at the
// end of the message or on error.
func (d *decoder) next() (num int, typ int, ok bool) {
	if len(d.b) == 0 || d.err != nil {
		return 0, 0, false
	}
	t := d.varint()
	if d.err != nil {
		return 0, 0, false
	}
	num, typ = int(t>>3), int(t&7)
	if t>>3 == 0 || t>>3 > 1<<29-1 {
		d.fail(errFieldNumber)
		return 0, 0, false
	}
	return num, typ, true
}

func (d *decoder) bytes() []byte {
	n := d.varint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(errTruncated)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// skip skips one field value of wire type typ whose tag (field num) was read.
func (d *decoder) skip(num, typ, depth int) {
	switch typ {
	case wireVarint:
		d.varint()
	case wireI64:
		d.take(8)
	case wireI32:
		d.take(4)
	case wireLen:
		d.bytes()
	case wireSGroup:
		if depth >= maxGroupDepth {
			d.fail(errGroup)
			return
		}
		for {
			n, t, ok := d.next()
			if !ok {
				d.fail(errGroup) // ended (or failed) inside the group
				return
			}
			if t == wireEGroup {
				if n != num {
					d.fail(errGroup)
				}
				return
			}
			d.skip(n, t, depth+1)
		}
	case wireEGroup:
		d.fail(errGroup) // end without start
	default:
		d.fail(errWireType)
	}
}

func (d *decoder) take(n int) {
	if len(d.b) < n {
		d.fail(errTruncated)
		return
	}
	d.b = d.b[n:]
}

// Field helpers. A known field with an unexpected wire type is skipped as
// an unknown field, as proto.Unmarshal does; ok is false then (or on error).

func (d *decoder) intField(num, typ int) (uint64, bool) {
	if typ != wireVarint {
		d.skip(num, typ, 0)
		return 0, false
	}
	v := d.varint()
	return v, d.err == nil
}

func (d *decoder) lenField(num, typ int) ([]byte, bool) {
	if typ != wireLen {
		d.skip(num, typ, 0)
		return nil, false
	}
	v := d.bytes()
	return v, d.err == nil
}

func decodeQueued(b []byte, q *Queued) error {
	d := decoder{b: b}
	for num, typ, ok := d.next(); ok; num, typ, ok = d.next() {
		switch num {
		case 1:
			if v, ok := d.lenField(num, typ); ok {
				q.Limit = string(v)
			}
		case 2:
			if v, ok := d.intField(num, typ); ok {
				q.Position = int32(v)
			}
		case 3:
			if v, ok := d.intField(num, typ); ok {
				q.QueueLength = int32(v)
			}
		default:
			d.skip(num, typ, 0)
		}
	}
	return d.err
}

func decodeAdmitted(b []byte, r *Reply) error {
	d := decoder{b: b}
	for num, typ, ok := d.next(); ok; num, typ, ok = d.next() {
		switch num {
		case 1:
			if v, ok := d.lenField(num, typ); ok {
				r.LeaseID = string(v)
			}
		case 2:
			if v, ok := d.lenField(num, typ); ok {
				r.Limit = string(v)
			}
		case 3:
			if v, ok := d.intField(num, typ); ok {
				r.QueuedUsec = int64(v)
			}
		case 4:
			if v, ok := d.intField(num, typ); ok {
				r.Exec = v != 0
			}
		default:
			d.skip(num, typ, 0)
		}
	}
	return d.err
}

func decodeRejected(b []byte, r *Reply) error {
	d := decoder{b: b}
	for num, typ, ok := d.next(); ok; num, typ, ok = d.next() {
		switch num {
		case 1:
			if v, ok := d.intField(num, typ); ok {
				r.Reason = int32(v)
			}
		case 2:
			if v, ok := d.lenField(num, typ); ok {
				r.Message = string(v)
			}
		case 3:
			if v, ok := d.lenField(num, typ); ok {
				r.Limit = string(v)
			}
		default:
			d.skip(num, typ, 0)
		}
	}
	return d.err
}

// DecodeServerMsg decodes a sluice.v1.ServerMsg. Unknown fields are skipped.
// As in protobuf, when several oneof members appear the last one wins, and a
// member repeated back to back is merged.
func DecodeServerMsg(b []byte) (ServerMsg, error) {
	var m ServerMsg
	d := decoder{b: b}
	for num, typ, ok := d.next(); ok; num, typ, ok = d.next() {
		var kind ServerKind
		switch num {
		case 1:
			kind = ServerQueued
		case 2:
			kind = ServerAdmitted
		case 3:
			kind = ServerRejected
		default:
			d.skip(num, typ, 0)
			continue
		}
		body, ok := d.lenField(num, typ)
		if !ok {
			continue
		}
		if m.Kind != kind {
			m = ServerMsg{Kind: kind}
		}
		var err error
		switch kind {
		case ServerQueued:
			err = decodeQueued(body, &m.Queued)
		case ServerAdmitted:
			m.Reply.Admitted = true
			err = decodeAdmitted(body, &m.Reply)
		case ServerRejected:
			err = decodeRejected(body, &m.Reply)
		}
		if err != nil {
			return ServerMsg{}, err
		}
	}
	if d.err != nil {
		return ServerMsg{}, d.err
	}
	return m, nil
}

func decodeAdmit(b []byte, r *AdmitRequest) error {
	d := decoder{b: b}
	for num, typ, ok := d.next(); ok; num, typ, ok = d.next() {
		switch num {
		case 1:
			if v, ok := d.lenField(num, typ); ok {
				r.Command = string(v)
			}
		case 2:
			if v, ok := d.lenField(num, typ); ok {
				r.Subcommand = string(v)
			}
		case 3:
			if v, ok := d.lenField(num, typ); ok {
				r.Repo = append([]byte(nil), v...)
			}
		case 4:
			if v, ok := d.lenField(num, typ); ok {
				r.RemoteIP = string(v)
			}
		case 5:
			if v, ok := d.lenField(num, typ); ok {
				r.User = string(v)
			}
		case 6:
			if v, ok := d.lenField(num, typ); ok {
				r.CorrelationID = string(v)
			}
		case 7:
			if v, ok := d.intField(num, typ); ok {
				r.Hook = v != 0
			}
		case 8:
			if v, ok := d.intField(num, typ); ok {
				r.WorkerPID = int32(v)
			}
		case 9:
			if v, ok := d.intField(num, typ); ok {
				r.CanExec = v != 0
			}
		case 10:
			if v, ok := d.intField(num, typ); ok {
				r.QueuedSince = int64(v)
			}
		default:
			d.skip(num, typ, 0)
		}
	}
	return d.err
}

func decodeFinished(b []byte, f *Finished) error {
	d := decoder{b: b}
	for num, typ, ok := d.next(); ok; num, typ, ok = d.next() {
		switch num {
		case 1:
			if v, ok := d.intField(num, typ); ok {
				f.ExitCode = int32(v)
			}
		case 2:
			if v, ok := d.intField(num, typ); ok {
				f.Signal = int32(v)
			}
		case 3:
			if v, ok := d.intField(num, typ); ok {
				f.UserUsec = int64(v)
			}
		case 4:
			if v, ok := d.intField(num, typ); ok {
				f.SystemUsec = int64(v)
			}
		case 5:
			if v, ok := d.intField(num, typ); ok {
				f.MaxRSSKiB = int64(v)
			}
		case 6:
			if v, ok := d.intField(num, typ); ok {
				f.RealUsec = int64(v)
			}
		default:
			d.skip(num, typ, 0)
		}
	}
	return d.err
}

// DecodeClientMsg decodes a sluice.v1.ClientMsg (the agent uses
// proto.Unmarshal; this exists for tests and fake servers).
func DecodeClientMsg(b []byte) (ClientMsg, error) {
	var m ClientMsg
	d := decoder{b: b}
	for num, typ, ok := d.next(); ok; num, typ, ok = d.next() {
		var kind ClientKind
		switch num {
		case 1:
			kind = ClientAdmit
		case 2:
			kind = ClientFinished
		default:
			d.skip(num, typ, 0)
			continue
		}
		body, ok := d.lenField(num, typ)
		if !ok {
			continue
		}
		if m.Kind != kind {
			m = ClientMsg{Kind: kind}
		}
		var err error
		if kind == ClientAdmit {
			err = decodeAdmit(body, &m.Admit)
		} else {
			err = decodeFinished(body, &m.Finished)
		}
		if err != nil {
			return ClientMsg{}, err
		}
	}
	if d.err != nil {
		return ClientMsg{}, d.err
	}
	return m, nil
}
