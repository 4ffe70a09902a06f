package gitwrap

import (
	"os"
	"path/filepath"
	"testing"
)

// mkGitDir makes a minimal git directory (HEAD and objects/) at dir.
func mkGitDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "objects"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "HEAD"), []byte("ref: refs/heads/main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRepo(t *testing.T) {
	root := t.TempDir()
	mkGitDir(t, filepath.Join(root, "bare.git"))
	mkGitDir(t, filepath.Join(root, "work", ".git"))
	mkGitDir(t, filepath.Join(root, "both.git", ".git")) // "both" → both.git/.git
	mkGitDir(t, filepath.Join(root, "home", "alice", "r.git"))
	passwd := filepath.Join(root, "passwd")
	os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::"+filepath.Join(root, "home", "bob")+":/bin/sh\n"), 0o644)
	mkGitDir(t, filepath.Join(root, "home", "bob", "p.git"))

	env := map[string]string{"HOME": filepath.Join(root, "home", "alice")}
	getenv := func(k string) string { return env[k] }
	for _, c := range []struct {
		name   string
		argv   []string
		cwd    string
		gitDir string // GIT_DIR
		want   string
	}{
		{"ssh absolute", []string{"git-upload-pack", root + "/bare.git"}, "/", "", root + "/bare.git"},
		{"ssh without .git suffix", []string{"git-upload-pack", root + "/bare"}, "/", "", root + "/bare.git"},
		{"receive-pack without suffix", []string{"git-receive-pack", root + "/bare"}, "/", "", root + "/bare.git"},
		{"non-bare via worktree", []string{"git-upload-pack", root + "/work"}, "/", "", root + "/work"},
		{"non-bare via .git", []string{"git-upload-pack", root + "/work/.git"}, "/", "", root + "/work"},
		{"suffix .git/.git", []string{"git-upload-pack", root + "/both"}, "/", "", root + "/both.git"},
		{"relative to cwd", []string{"git-upload-pack", "bare.git/"}, root, "", root + "/bare.git"},
		{"daemon strict .", []string{"git", "upload-pack", "--strict", "--timeout=0", "."}, root + "/bare.git", "", root + "/bare.git"},
		{"strict does not probe", []string{"git", "upload-pack", "--strict", root + "/bare"}, "/", "", root + "/bare"},
		{"http .", []string{"git", "upload-pack", "--stateless-rpc", "."}, root + "/work/.git", "", root + "/work"},
		{"-C chain", []string{"git", "-C", root, "-C", "work", "-C", "", "upload-pack", "."}, "/elsewhere", "", root + "/work"},
		{"-C absolute resets", []string{"git", "-C", "/x", "-C", root, "upload-pack", "bare.git"}, "/", "", root + "/bare.git"},
		{"separate --timeout value", []string{"git", "upload-pack", "--timeout", "5", root + "/bare.git"}, "/", "", root + "/bare.git"},
		{"after --", []string{"git", "upload-pack", "--", "-weird"}, root, "", root + "/-weird"},
		{"~ (HOME)", []string{"git-upload-pack", "~/r.git"}, "/", "", root + "/home/alice/r.git"},
		{"~user (passwd)", []string{"git-upload-pack", "~bob/p"}, "/", "", root + "/home/bob/p.git"},
		{"~unknown stays", []string{"git-upload-pack", "~nobody/p"}, "/srv", "", "/srv/~nobody/p"},
		{"hook: cwd with GIT_DIR=.", []string{"sluice-shim", "git", "pack-objects", "--revs"}, root + "/bare.git", ".", root + "/bare.git"},
		{"hook: non-bare entered at .git", []string{"sluice-shim", "git", "pack-objects"}, root + "/work/.git", ".", root + "/work"},
		{"--git-dir relative", []string{"git", "--git-dir=bare.git", "gc"}, root, "/ignored", root + "/bare.git"},
		{"GIT_DIR relative after -C", []string{"git", "-C", root, "gc"}, "/", "work/.git", root + "/work"},
		{"no git dir: cwd", []string{"git", "gc"}, root + "/work/sub/..", "", root + "/work"},
		{"root .git", []string{"git", "gc"}, "/.git", "", "/"},
		{"weird bytes", []string{"git-upload-pack", "/srv/\xff\x01r\n.git"}, "/", "", "/srv/\xff\x01r\n.git"},
		{"no directory argument", []string{"git", "upload-pack"}, "/srv/x", "", "/srv/x"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env["GIT_DIR"] = c.gitDir
			inv := Parse(c.argv)
			if got := repo(&inv, c.cwd, getenv, passwd); got != c.want {
				t.Errorf("repo = %q, want %q", got, c.want)
			}
		})
	}
}

// TestRepoPhysical: every spelling of one repository gives one key, as
// git's chdir() resolves it: a symlinked path, ".." across a symlink, "~/"
// with a symlinked HOME, and options around the directory argument.
func TestRepoPhysical(t *testing.T) {
	root := t.TempDir()
	real := filepath.Join(root, "srv", "git", "project.git")
	mkGitDir(t, real)
	os.MkdirAll(filepath.Join(root, "deep", "er"), 0o755)
	// link → srv/git; "link/../git/project.git" is srv/git/project.git to
	// the kernel (the parent of the link's target), "git/project.git"
	// under root lexically.
	os.Symlink(filepath.Join(root, "srv", "git"), filepath.Join(root, "link"))
	os.Symlink(filepath.Join(root, "srv", "git"), filepath.Join(root, "deep", "er", "via"))
	os.Symlink(filepath.Join(root, "srv", "git"), filepath.Join(root, "home"))
	env := map[string]string{"HOME": filepath.Join(root, "home")}
	getenv := func(k string) string { return env[k] }
	for _, argv := range [][]string{
		{"git-upload-pack", real},
		{"git-upload-pack", filepath.Join(root, "link", "project.git")},
		{"git-upload-pack", filepath.Join(root, "link", "project")},
		{"git-upload-pack", root + "/deep/er/via/../git/project.git"},
		{"git-upload-pack", "~/project.git"},
		{"git", "upload-pack", real, "--timeout", "30"},
		{"git", "upload-pack", "--timeout", "30", real},
		{"git", "upload-pack", "--strict", "--timeout=0", root + "/link/project.git"},
		{"git", "-C", root + "/link", "upload-pack", "project.git"},
	} {
		inv := Parse(argv)
		if got := repo(&inv, "/", getenv, "/nonexistent"); got != real {
			t.Errorf("%q: key %q, want %q", argv, got, real)
		}
	}
}
