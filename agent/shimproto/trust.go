package shimproto

import (
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Trust in the place the shim looks (issue 14, property 1).
//
// shim.conf names the binary the shim executes (git_bin), so reading it from
// a place another user can write is running that user's code as the Git
// server. LoadShimConfig therefore trusts the socket's directory and
// shim.conf only when:
//
//   - each is owned by root, by the uid running the shim, or by the owner of
//     the socket in that directory (the agent created it: that is how the
//     shim learns the agent's uid without any configuration);
//   - neither is writable by group or others;
//   - shim.conf is a regular file reached without following a symbolic link
//     (O_NOFOLLOW, relative to the directory descriptor that was checked,
//     and the descriptor actually read is fstat'ed).
//
// The path itself comes from SocketPath: /run/sluice (only root can create
// it) or SLUICE_SOCKET, which whoever sets the Git server's environment
// chose; the checks above guard what other users could write there.
//
// Where the fail mode comes from when shim.conf cannot be used:
//
//   - no directory, or no shim.conf in it: the agent is not installed or has
//     never run; defaults, fail open (the socket's directory's sticky bit,
//     below, still applies when the directory exists);
//   - shim.conf or the directory untrusted (wrong owner, writable by others,
//     a symbolic link, not a regular file): fail closed, and the socket there
//     is not dialled. Whoever can plant the file must not be able to choose
//     "open";
//   - permission denied (the Git server's user is not in the socket group):
//     the agent mirrors fail_mode in the sticky bit of the socket's directory
//     (WriteShimConfig sets it for "closed", clears it for "open"); anyone
//     can stat that directory, so the shim still applies the configured fail
//     mode, and says which group the user must join.
//   - the directory cannot even be looked up (SLUICE_SOCKET under a
//     directory this user cannot search): fail closed.
//
// The cost on the hot path is what the shim already paid plus an O_PATH open
// of the directory, an fstat of it, an O_PATH open and fstat of the socket,
// and an fstat of shim.conf's descriptor: no extra library.

// ShimSetup is what the shim knows before it asks for admission.
type ShimSetup struct {
	// Config is shim.conf's settings, or the defaults for what could not be
	// read or trusted. Config.FailClosed is the fail mode to apply.
	Config ShimConfig
	// Problem says what went wrong with the socket's directory or
	// shim.conf, for a warning or the shim's "sluice:" line; nil when
	// everything could be read (or nothing is installed).
	Problem error
	// NoDial is true when the socket must not be dialled: its directory is
	// not trusted, or cannot be searched.
	NoDial bool
	// FailWhy says where Config.FailClosed came from, for messages:
	// `fail_mode is "closed"`, or why the shim fails closed regardless.
	FailWhy string
	// SocketGID is the socket's group (-1 when unknown), named in
	// permission-denied messages.
	SocketGID int
}

// Problem kinds.
const (
	// TrustUntrusted: the directory or shim.conf may be written by someone
	// other than root or the agent.
	TrustUntrusted = iota + 1
	// TrustDenied: permission denied opening the directory, the socket or
	// shim.conf.
	TrustDenied
	// TrustOther: any other error (unreadable file, bad line).
	TrustOther
)

// TrustError describes a problem with the socket's directory or shim.conf.
type TrustError struct {
	Kind int
	Path string
	Msg  string // complete sentence fragment, without the "sluice: " prefix
}

func (e *TrustError) Error() string { return e.Msg }

// oPath is O_PATH: not defined by package syscall on amd64, same value on
// every architecture Go supports on Linux.
const oPath = 0x200000

// LoadShimConfig reads shim.conf next to socket, trusting it only as the
// package documentation above describes.
func LoadShimConfig(socket string) ShimSetup {
	return loadShimConfig(socket, syscall.Geteuid(), syscall.Getegid())
}

func loadShimConfig(socket string, euid, egid int) ShimSetup {
	s := ShimSetup{Config: DefaultShimConfig(), SocketGID: -1}
	failOpen := func(why string) { s.Config.FailClosed = false; s.FailWhy = why }
	failClosed := func(why string) { s.Config.FailClosed = true; s.FailWhy = why }
	failOpen(`fail_mode is "open"`)
	if !filepath.IsAbs(socket) {
		// A relative path would be looked up from git's working directory,
		// a repository.
		failClosed("failing closed because an untrusted socket path cannot choose fail_mode")
		s.NoDial = true
		s.Problem = &TrustError{Kind: TrustUntrusted, Path: socket, Msg: "not trusting socket path " + strconv.Quote(socket) +
			": " + SocketEnv + " must be an absolute path"}
		return s
	}
	dir := filepath.Dir(socket)
	conf := ShimConfigPath(socket)

	dfd, err := openRetry(func() (int, error) {
		return syscall.Open(dir, oPath|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	})
	switch err {
	case nil:
	case syscall.ENOENT, syscall.ENOTDIR:
		return s // nothing installed here: defaults, fail open
	case syscall.EACCES:
		failClosed("failing closed because fail_mode cannot be read")
		s.NoDial = true
		s.Problem = &TrustError{Kind: TrustDenied, Path: dir, Msg: "permission denied looking up " + dir + " as " +
			who(euid, egid) + "; make the path to the socket searchable for the Git server's user, or point " + SocketEnv + " elsewhere"}
		return s
	default:
		failClosed("failing closed because fail_mode cannot be read")
		s.NoDial = true
		s.Problem = &TrustError{Kind: TrustOther, Path: dir, Msg: "open " + dir + ": " + err.Error()}
		return s
	}
	defer syscall.Close(dfd)
	var dst syscall.Stat_t
	if err := syscall.Fstat(dfd, &dst); err != nil {
		failClosed("failing closed because fail_mode cannot be read")
		s.NoDial = true
		s.Problem = &TrustError{Kind: TrustOther, Path: dir, Msg: "stat " + dir + ": " + err.Error()}
		return s
	}

	// The socket's owner is the agent's uid.
	agentUID, searchDenied := -1, false
	sfd, err := openRetry(func() (int, error) {
		return syscall.Openat(dfd, filepath.Base(socket), oPath|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	})
	if err == nil {
		var sst syscall.Stat_t
		if syscall.Fstat(sfd, &sst) == nil && sst.Mode&syscall.S_IFMT == syscall.S_IFSOCK {
			agentUID, s.SocketGID = int(sst.Uid), int(sst.Gid)
		}
		syscall.Close(sfd)
	} else if err == syscall.EACCES {
		searchDenied = true
	}
	trusted := func(uid uint32) bool {
		return uid == 0 || int(uid) == euid || (agentUID >= 0 && int(uid) == agentUID)
	}
	if !trusted(dst.Uid) || dst.Mode&0o022 != 0 {
		failClosed("failing closed because an untrusted directory cannot choose fail_mode")
		s.NoDial = true
		s.Problem = &TrustError{Kind: TrustUntrusted, Path: dir, Msg: "not trusting " + dir + ": " + describe(&dst) +
			"; it must belong to root or the agent's user" + agentNote(agentUID) + " and not be writable by group or others"}
		return s
	}
	if dst.Mode&syscall.S_ISVTX != 0 {
		failClosed(`fail_mode is "closed"`)
	}
	if searchDenied {
		s.NoDial = true
		if s.SocketGID < 0 {
			s.SocketGID = int(dst.Gid)
		}
		s.Problem = &TrustError{Kind: TrustDenied, Path: dir, Msg: "permission denied opening " + dir + " (" + describe(&dst) +
			") as " + who(euid, egid) + "; " + GroupFix(s.SocketGID)}
		return s
	}

	cfd, err := openRetry(func() (int, error) {
		return syscall.Openat(dfd, "shim.conf", syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	})
	switch err {
	case nil:
	case syscall.ENOENT:
		return s // the agent has not written it yet: defaults
	case syscall.ELOOP:
		failClosed("failing closed because an untrusted shim.conf cannot choose fail_mode")
		s.NoDial = true
		s.Problem = &TrustError{Kind: TrustUntrusted, Path: conf, Msg: "not trusting " + conf + ": it is a symbolic link"}
		return s
	case syscall.EACCES:
		gid := s.SocketGID
		if gid < 0 {
			gid = int(dst.Gid)
		}
		s.Problem = &TrustError{Kind: TrustDenied, Path: conf, Msg: "permission denied reading " + conf + " as " + who(euid, egid) + "; " + GroupFix(gid)}
		return s
	default:
		s.Problem = &TrustError{Kind: TrustOther, Path: conf, Msg: "open " + conf + ": " + err.Error()}
		return s
	}
	defer syscall.Close(cfd)
	var cst syscall.Stat_t
	if err := syscall.Fstat(cfd, &cst); err != nil {
		s.Problem = &TrustError{Kind: TrustOther, Path: conf, Msg: "stat " + conf + ": " + err.Error()}
		return s
	}
	if cst.Mode&syscall.S_IFMT != syscall.S_IFREG || !trusted(cst.Uid) || cst.Mode&0o022 != 0 {
		failClosed("failing closed because an untrusted shim.conf cannot choose fail_mode")
		s.NoDial = true
		s.Problem = &TrustError{Kind: TrustUntrusted, Path: conf, Msg: "not trusting " + conf + ": " + describe(&cst) +
			"; it must be a regular file belonging to root or the agent's user" + agentNote(agentUID) + ", not writable by group or others"}
		return s
	}
	data, err := readFD(cfd, maxConfigSize)
	if err != nil {
		s.Problem = &TrustError{Kind: TrustOther, Path: conf, Msg: "read " + conf + ": " + err.Error()}
		return s
	}
	cfg := DefaultShimConfig()
	perr := parseShimConfig(data, &cfg)
	s.Config = cfg
	if cfg.FailClosed {
		s.FailWhy = `fail_mode is "closed"`
	} else {
		s.FailWhy = `fail_mode is "open"`
	}
	if perr != nil {
		s.Problem = &TrustError{Kind: TrustOther, Path: conf, Msg: conf + ": " + perr.Error() + " (using defaults for what could not be read)"}
	}
	return s
}

// GroupFix is the advice for a permission-denied socket or shim.conf.
func GroupFix(gid int) string {
	g := "the socket group"
	if gid >= 0 {
		g = "the socket's group " + groupName(gid)
	}
	return "add the Git server's user to " + g + " ([agent] socket_group) and restart the server"
}

func openRetry(open func() (int, error)) (int, error) {
	for {
		fd, err := open()
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// readFD reads fd to the end; max bytes or more is an error.
func readFD(fd, max int) ([]byte, error) {
	buf := make([]byte, 0, 1024)
	for len(buf) < max {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := syscall.Read(fd, buf[len(buf):cap(buf)])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
	return nil, errTooLarge
}

// describe names a file's owner, group and mode: "owner uid 1001
// (mallory), group gid 1001 (mallory), mode 0666".
func describe(st *syscall.Stat_t) string {
	return "owner " + userName(int(st.Uid)) + ", group " + groupName(int(st.Gid)) + ", mode " + modeString(st.Mode)
}

func agentNote(uid int) string {
	if uid < 0 || uid == 0 {
		return ""
	}
	return " (" + userName(uid) + ", the socket's owner)"
}

func who(uid, gid int) string {
	return userName(uid) + " " + groupName(gid)
}

func modeString(m uint32) string {
	s := strconv.FormatUint(uint64(m&0o7777), 8)
	for len(s) < 4 {
		s = "0" + s
	}
	return s
}

// userName is "uid N (name)", the name from /etc/passwd when found. Only
// error paths call it.
func userName(uid int) string {
	return "uid " + strconv.Itoa(uid) + nameSuffix("/etc/passwd", uid)
}

// groupName is "gid N (name)", the name from /etc/group when found.
func groupName(gid int) string {
	return "gid " + strconv.Itoa(gid) + nameSuffix("/etc/group", gid)
}

func nameSuffix(file string, id int) string {
	data, err := ReadFile(file, 4<<20)
	if err != nil {
		return ""
	}
	if name := LookupID(data, id); name != "" {
		return " (" + name + ")"
	}
	return ""
}

// LookupID returns the name of the first line of an /etc/passwd or
// /etc/group style file ("name:password:id:...") whose id field is id, or
// "". The name is returned only when it is printable ASCII without spaces.
func LookupID(data []byte, id int) string {
	want := strconv.Itoa(id)
	s := string(data)
	for s != "" {
		line := s
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			line, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name == "" {
			continue
		}
		_, rest, ok = strings.Cut(rest, ":")
		if !ok {
			continue
		}
		idField, _, _ := strings.Cut(rest, ":")
		if idField != want {
			continue
		}
		for i := 0; i < len(name); i++ {
			if name[i] <= ' ' || name[i] >= 0x7f {
				return ""
			}
		}
		if len(name) > 64 {
			return ""
		}
		return name
	}
	return ""
}
