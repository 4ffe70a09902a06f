package shimproto

import (
	"bytes"
	"testing"
)

func TestPackCacheMessagesRoundTrip(t *testing.T) {
	if PackCacheMagic[0] != 'C' || PackCacheMagic[0] == Magic[0] {
		t.Fatalf("PackCacheMagic must start with 'C' (agent/packcache_hook.go dispatches on it)")
	}
	l := PackLookup{ObjDir: []byte("/r/\xffobjects"), Args: [][]byte{[]byte("pack-objects"), []byte("--stdout")},
		Env: [][]byte{[]byte("GIT_PROTOCOL=version=2")}, StdinLen: 7}
	got, err := DecodePackLookup(AppendPackLookup(nil, &l))
	if err != nil || !bytes.Equal(got.ObjDir, l.ObjDir) || len(got.Args) != 2 || string(got.Env[0]) != "GIT_PROTOCOL=version=2" || got.StdinLen != 7 {
		t.Fatalf("lookup round trip: %+v, %v", got, err)
	}
	l.StdinLen = MaxPackStdin + 1
	if _, err := DecodePackLookup(AppendPackLookup(nil, &l)); err == nil {
		t.Fatal("stdin over MaxPackStdin accepted")
	}
	a := PackAnswer{Kind: PackHit, Size: 1 << 40, MaxBytes: 5, Message: "m"}
	if got, err := DecodePackAnswer(AppendPackAnswer(nil, &a)); err != nil || got != a {
		t.Fatalf("answer round trip: %+v, %v", got, err)
	}
	s := PackStatus{OK: true, Size: 12, Message: "x"}
	if got, err := DecodePackStatus(AppendPackStatus(nil, &s)); err != nil || got != s {
		t.Fatalf("status round trip: %+v, %v", got, err)
	}
}

func TestPackKeyFilters(t *testing.T) {
	for arg, in := range map[string]bool{"--progress": false, "-q": false, "--stdout": true, "--filter=blob:none": true, "--shallow-file": true, "": true} {
		if PackKeyArg(arg) != in {
			t.Errorf("PackKeyArg(%q) = %v", arg, !in)
		}
	}
	for kv, in := range map[string]bool{
		"GIT_PROTOCOL=version=2": true, "GIT_NAMESPACE=x": true, "GIT_CONFIG_PARAMETERS='a.b'='c'": true,
		"GIT_TRACE2_PARENT_SID=1": false, "GIT_HTTP_USER_AGENT=git/2": false, "GIT_COMMITTER_NAME=u": false,
		"REMOTE_ADDR=1.2.3.4": false, "CORRELATION_ID=c": false, "SSH_CONNECTION=a b": false, "SLUICE_SOCKET=/s": false,
	} {
		if PackKeyEnv(kv) != in {
			t.Errorf("PackKeyEnv(%q) = %v", kv, !in)
		}
	}
}
