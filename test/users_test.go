package test

// users_test.go creates the unprivileged users the attack tests play: one
// helper, so every test creates and deletes users the same way.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// testUser is an unprivileged user created for one test.
type testUser struct {
	name     string
	uid, gid uint32
}

// userLockFile serialises useradd/userdel between tests of one run (and
// with anything else on the host that takes it).
const userLockFile = "/run/lock/sluice-test-users.lock"

// newTestUser creates a system user sluicetest-<tag>-<random> with its own
// group, no home and no login shell, and deletes both when the test ends.
// It skips without root or useradd.
func newTestUser(t *testing.T, tag string) testUser {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create users and run processes as them")
	}
	if _, err := exec.LookPath("useradd"); err != nil {
		t.Skip("needs useradd (apt-get install passwd) to create test users")
	}
	var rnd [3]byte
	rand.Read(rnd[:])
	name := "sluicetest-" + tag + "-" + hex.EncodeToString(rnd[:])
	if out, err := passwdTool("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
		"--shell", "/usr/sbin/nologin", "--user-group", name); err != nil {
		t.Fatalf("useradd %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := passwdTool("userdel", name); err != nil {
			t.Errorf("userdel %s: %v\n%s", name, err, out)
		}
		passwdTool("groupdel", name) // already gone where USERGROUPS_ENAB removes it
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return testUser{name: name, uid: uint32(uid), gid: uint32(gid)}
}

// passwdTool runs useradd/userdel/groupdel under userLockFile, retrying
// while another process holds /etc/passwd's own lock.
func passwdTool(argv ...string) ([]byte, error) {
	f, err := os.OpenFile(userLockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return nil, err
	}
	var out []byte
	for range 20 {
		out, err = exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err == nil || !bytes.Contains(out, []byte("lock")) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return out, err
	}
	return nil, nil
}
