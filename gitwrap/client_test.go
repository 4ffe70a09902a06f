package gitwrap

import (
	"regexp"
	"testing"
)

func envOf(m map[string]string) Env { return func(k string) string { return m[k] } }

func TestRemoteIP(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"SSH_CONNECTION": "192.0.2.7 52311 10.0.0.1 22"}, "192.0.2.7"},
		{map[string]string{"SSH_CONNECTION": "2001:db8::7 52311 ::1 22"}, "2001:db8::7"},
		{map[string]string{"SSH_CONNECTION": "::ffff:192.0.2.9 1 ::1 22"}, "192.0.2.9"},
		{map[string]string{"SSH_CONNECTION": "fe80::1%eth0 1 fe80::2%eth0 22"}, "fe80::1"},
		{map[string]string{"SSH_CLIENT": "198.51.100.2 4000 22"}, "198.51.100.2"},
		{map[string]string{"SSH_CONNECTION": "garbage", "SSH_CLIENT": "198.51.100.2 4000 22"}, "198.51.100.2"},
		{map[string]string{"REMOTE_ADDR": "203.0.113.5", "REMOTE_PORT": "5555"}, "203.0.113.5"},
		{map[string]string{"REMOTE_ADDR": "[2001:db8::5]"}, "2001:db8::5"},     // git daemon, IPv6
		{map[string]string{"REMOTE_ADDR": "[2001:db8::5]:443"}, "2001:db8::5"}, // with port
		{map[string]string{"REMOTE_ADDR": "203.0.113.5:8080"}, "203.0.113.5"},
		// git daemon started from an ssh login: the inherited SSH_CONNECTION
		// is the operator's, REMOTE_ADDR the client's.
		{map[string]string{"SSH_CONNECTION": "192.0.2.7 1 2 3", "REMOTE_ADDR": "203.0.113.5"}, "203.0.113.5"},
		{map[string]string{"SSH_CONNECTION": "192.0.2.7 1 2 3", "REMOTE_ADDR": "garbage"}, "192.0.2.7"},
		{map[string]string{"REMOTE_ADDR": "unix:/run/x.sock"}, ""},
		{map[string]string{"REMOTE_ADDR": "[::1"}, ""},
		{map[string]string{"REMOTE_ADDR": "\xff\x00"}, ""},
		{map[string]string{"HTTP_X_FORWARDED_FOR": "192.0.2.1"}, ""},
		{map[string]string{}, ""},
	} {
		if got := RemoteIP(envOf(c.env)); got != c.want {
			t.Errorf("RemoteIP(%q) = %q, want %q", c.env, got, c.want)
		}
	}
}

func TestUser(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"GL_USERNAME": "gl", "GITEA_PUSHER_NAME": "gt", "REMOTE_USER": "ru", "USER": "git", "SSH_CONNECTION": "x"}, "gl"},
		{map[string]string{"GITEA_PUSHER_NAME": "gt", "REMOTE_USER": "ru"}, "gt"},
		{map[string]string{"REMOTE_USER": "ru", "USER": "www-data"}, "ru"},
		{map[string]string{"USER": "alice", "SSH_CONNECTION": "1.2.3.4 1 5.6.7.8 22"}, "alice"},
		{map[string]string{"LOGNAME": "alice", "SSH_CONNECTION": "1.2.3.4 1 5.6.7.8 22"}, "alice"},
		{map[string]string{"USER": "git"}, ""}, // daemon / web server account is not a client identity
		{map[string]string{}, ""},
	} {
		if got := User(envOf(c.env)); got != c.want {
			t.Errorf("User(%q) = %q, want %q", c.env, got, c.want)
		}
	}
}

func TestCorrelationID(t *testing.T) {
	if id, gen := CorrelationID(envOf(map[string]string{"CORRELATION_ID": "abc"})); id != "abc" || gen {
		t.Errorf("existing: %q %v", id, gen)
	}
	hex16 := regexp.MustCompile(`^[0-9a-f]{16}$`)
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		id, gen := CorrelationID(envOf(nil))
		if !gen || !hex16.MatchString(id) {
			t.Fatalf("generated %q %v", id, gen)
		}
		seen[id] = true
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct ids in 100", len(seen))
	}
}

func TestSetEnv(t *testing.T) {
	env := []string{"A=1", "CORRELATION_ID=old", "CORRELATION_IDX=keep"}
	env = SetEnv(env, "CORRELATION_ID", "new")
	if env[1] != "CORRELATION_ID=new" || len(env) != 3 || env[2] != "CORRELATION_IDX=keep" {
		t.Errorf("replace: %q", env)
	}
	if env = SetEnv(env, "B", "2"); env[3] != "B=2" {
		t.Errorf("append: %q", env)
	}
}
