// The pre-runtime half of ferry's sandbox (--enable-sandbox). After setup,
// ferry re-executes itself in place (same PID; the TAP, the API socket and
// a pidfd of the target are inherited, see sandbox.go) with _FERRY_SANDBOX
// set. Before the Go runtime starts any thread, this constructor
//
//   - enters a user namespace: the target's (an fd in _FERRY_SANDBOX_USERNS),
//     or a new one mapping only our own IDs ("new"), so that ferry holds no
//     capability in the user namespace it was started in;
//   - unshares a mount namespace, makes every mount private, and builds a
//     new root on a tmpfs holding only what ferry may read: /etc, /run, and
//     the target of /etc/resolv.conf when it lies outside both;
//   - pivots into it and detaches the old root;
//   - drops every capability but CAP_NET_BIND_SERVICE (effective, permitted,
//     inheritable, ambient and bounding sets), locks the securebits so that
//     root is not special, and sets no_new_privs;
//   - where the kernel offers Landlock, restricts file system access to
//     reading /etc and /run, writing the --pcap file, and removing the API
//     socket from its directory (see landlock() below).
//
// Setting up namespaces must happen here because the kernel refuses setns(2)
// into a user namespace, and unshare(CLONE_NEWNS) after it, to a
// multithreaded process; Landlock's landlock_restrict_self(2) confines the
// calling thread only (before Linux's TSYNC flag), so it too must come
// while the process has one thread: every thread the Go runtime starts
// later inherits the domain.
//
// When the namespaces cannot be set up (a user or mount namespace refused,
// pivot_root impossible on an initramfs root, ...), the constructor undoes
// its mounts and executes ferry again without the sandbox, with the reason
// in _FERRY_SANDBOX_FAILED, which the Go side reports as a warning: ferry
// then serves unconfined but for seccomp. With _FERRY_SANDBOX_STRICT=1 (the
// sandbox was asked for explicitly), and after pivot_root (no way back), a
// failure ends the process with a message on stderr instead. Keep nsenter.c's
// behaviour independent of this file: the two constructors act on
// different variables.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/types.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

// Keep in sync with sandbox.go.
#define ENV_SANDBOX "_FERRY_SANDBOX"
#define ENV_SANDBOX_USERNS "_FERRY_SANDBOX_USERNS"
// FD:PATH, a file to bind writable at PATH in the new root (--pcap).
#define ENV_SANDBOX_RW "_FERRY_SANDBOX_RW"
// FD, a directory ferry may remove files from (the API socket's).
#define ENV_SANDBOX_RMDIR "_FERRY_SANDBOX_RMDIR"
// Set (to the reason) when this image runs without the sandbox.
#define ENV_SANDBOX_FAILED "_FERRY_SANDBOX_FAILED"
// "1": a failure to build the sandbox is fatal, not a fallback.
#define ENV_SANDBOX_STRICT "_FERRY_SANDBOX_STRICT"
// "1": ferry may signal processes outside its Landlock domain (ferry run
// passes signals on to its command); otherwise signals are scoped.
#define ENV_SANDBOX_SIGNALS "_FERRY_SANDBOX_SIGNALS"
// Set by tests: the sandbox fails just before pivot_root.
#define ENV_DEBUG_FAIL "FERRY_DEBUG_SANDBOX_FAIL"

// What the constructor did, for the Go side's log (ferry_sandbox_landlock).
static int landlock_abi;          // the ABI applied; 0: none
static char landlock_note[256];   // why not, when not

// NEWROOT is where the new root's tmpfs is mounted before pivot_root. The
// mount is private to the new mount namespace.
#define NEWROOT "/tmp"
#define OLDROOT "/.oldroot"

static void sandbox_die(const char *what, const char *arg) {
	int err = errno;
	fprintf(stderr, "ferry: sandbox: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(err));
	_exit(1);
}

// Until pivot_root, a failure falls back to running without the sandbox:
// fallback_argv is set, fallback_mounted says the tmpfs is to be detached,
// fallback_fds are closed.
static char **fallback_argv;
static int fallback_mounted;
static int fallback_fds[3] = {-1, -1, -1};

// sandbox_fail falls back (before pivot_root) or dies.
static void sandbox_fail(const char *what, const char *arg) {
	if (fallback_argv == NULL)
		sandbox_die(what, arg);
	int err = errno;
	char reason[512];
	snprintf(reason, sizeof(reason), "%s%s%s: %s", what, arg ? " " : "", arg ? arg : "", strerror(err));
	if (fallback_mounted)
		umount2(NEWROOT, MNT_DETACH);
	for (int i = 0; i < 3; i++)
		if (fallback_fds[i] >= 0)
			close(fallback_fds[i]);
	if (setenv(ENV_SANDBOX_FAILED, reason, 1) < 0)
		sandbox_die(what, arg);
	extern char **environ;
	execve("/proc/self/exe", fallback_argv, environ);
	errno = err;
	sandbox_die(what, arg);
}

static void write_file(const char *path, const char *s) {
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		sandbox_fail("open", path);
	size_t n = strlen(s);
	if (write(fd, s, n) != (ssize_t)n)
		sandbox_fail("write", path);
	close(fd);
}

// parse_fd parses a decimal fd number up to its end or a ':', or returns -1.
static int parse_fd(const char *v) {
	char *end;
	errno = 0;
	long fd = strtol(v, &end, 10);
	if (end == v || (*end != '\0' && *end != ':') || errno != 0 || fd < 0 || fd > INT_MAX)
		return -1;
	return (int)fd;
}

static void enter_userns(const char *v) {
	if (v == NULL || *v == '\0')
		return; // ferry runs as root: dropping capabilities is enough
	if (strcmp(v, "new") == 0) {
		uid_t uid = geteuid();
		gid_t gid = getegid();
		char map[64];
		if (unshare(CLONE_NEWUSER) < 0)
			sandbox_fail("create a user namespace", NULL);
		write_file("/proc/self/setgroups", "deny");
		snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)uid, (unsigned)uid);
		write_file("/proc/self/uid_map", map);
		snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)gid, (unsigned)gid);
		write_file("/proc/self/gid_map", map);
		return;
	}
	int fd = parse_fd(v);
	if (fd < 0) {
		errno = EINVAL;
		sandbox_die("bad " ENV_SANDBOX_USERNS, v);
	}
	fallback_fds[2] = fd;
	if (setns(fd, CLONE_NEWUSER) < 0)
		sandbox_fail("join the target's user namespace", NULL);
	close(fd);
	fallback_fds[2] = -1;
}

// mkdirs creates path and its parents (mode 0755) below the new root.
static void mkdirs(char *path) {
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			sandbox_fail("mkdir", path);
		*p = '/';
	}
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		sandbox_fail("mkdir", path);
}

// readonly remounts the bind mount at path read-only, keeping the flags it
// has (the kernel refuses to clear flags locked by a less privileged mount
// namespace). Best effort: the mount is private to this namespace anyway.
static void readonly(const char *path) {
	struct statvfs sv;
	if (statvfs(path, &sv) < 0)
		return;
	unsigned long flags = MS_REMOUNT | MS_BIND | MS_RDONLY;
	if (sv.f_flag & ST_NOSUID)
		flags |= MS_NOSUID;
	if (sv.f_flag & ST_NODEV)
		flags |= MS_NODEV;
	if (sv.f_flag & ST_NOEXEC)
		flags |= MS_NOEXEC;
	if (sv.f_flag & ST_NOATIME)
		flags |= MS_NOATIME;
	if (sv.f_flag & ST_NODIRATIME)
		flags |= MS_NODIRATIME;
	if (sv.f_flag & ST_RELATIME)
		flags |= MS_RELATIME;
	mount(NULL, path, NULL, flags, NULL);
}

// bind mounts the object open at fd (a directory or a file) at dst, a path
// inside the new root, recursively, and read-only unless writable.
static void bind(int fd, const char *dst, int dir, int writable) {
	char src[64], path[PATH_MAX];
	snprintf(path, sizeof(path), "%s", dst);
	if (dir) {
		mkdirs(path);
	} else {
		char *slash = strrchr(path, '/');
		if (slash != NULL && slash != path) {
			*slash = '\0';
			mkdirs(path);
			*slash = '/';
		}
		struct stat st;
		if (stat(path, &st) < 0) { // (it may lie in /etc or /run, bound already)
			int f = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
			if (f < 0)
				sandbox_fail("create", path);
			close(f);
		}
	}
	snprintf(src, sizeof(src), "/proc/self/fd/%d", fd);
	if (mount(src, path, NULL, MS_BIND | MS_REC, NULL) < 0)
		sandbox_fail("bind mount into", path);
	if (!writable)
		readonly(path);
}

static int under(const char *path, const char *dir) {
	size_t n = strlen(dir);
	return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

// resolv binds what /etc/resolv.conf points to when that is outside /etc
// and /run: both its canonical path and the path its symlink names, so
// that the link resolves inside the new root.
static void resolv(int fd, const char *canon, const char *named) {
	char dst[PATH_MAX];
	if (!under(canon, "/etc") && !under(canon, "/run")) {
		snprintf(dst, sizeof(dst), NEWROOT "%s", canon);
		bind(fd, dst, 0, 0);
	}
	if (named[0] == '/' && strcmp(named, canon) != 0 && !under(named, "/etc") && !under(named, "/run")) {
		snprintf(dst, sizeof(dst), NEWROOT "%s", named);
		bind(fd, dst, 0, 0);
	}
}

static void drop_caps(void) {
	if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
	                                 SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED,
	          0, 0, 0) < 0)
		sandbox_die("set securebits", NULL);
	for (int cap = 0; cap < 64; cap++) {
		if (cap == CAP_NET_BIND_SERVICE)
			continue;
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
			sandbox_die("drop a capability from the bounding set", NULL);
	}
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		sandbox_die("clear the ambient capabilities", NULL);
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct data[2];
	memset(data, 0, sizeof(data));
	data[0].effective = data[0].permitted = 1u << CAP_NET_BIND_SERVICE;
	if (syscall(SYS_capset, &hdr, data) < 0)
		sandbox_die("drop capabilities", NULL);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		sandbox_die("set no_new_privs", NULL);
}

// Landlock's ABI, defined here because distributions' headers lag behind
// the kernels they run on (Debian 12's stop at ABI 2).
#ifndef __NR_landlock_create_ruleset
#define __NR_landlock_create_ruleset 444
#define __NR_landlock_add_rule 445
#define __NR_landlock_restrict_self 446
#endif
#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH 1
#define LL_FS_EXECUTE (1ULL << 0)
#define LL_FS_WRITE_FILE (1ULL << 1)
#define LL_FS_READ_FILE (1ULL << 2)
#define LL_FS_READ_DIR (1ULL << 3)
#define LL_FS_REMOVE_FILE (1ULL << 5)
#define LL_FS_ABI1 ((1ULL << 13) - 1) // EXECUTE .. MAKE_SYM
#define LL_FS_REFER (1ULL << 13)      // ABI 2
#define LL_FS_TRUNCATE (1ULL << 14)   // ABI 3
#define LL_FS_IOCTL_DEV (1ULL << 15)  // ABI 5
#define LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0) // ABI 6
#define LL_SCOPE_SIGNAL (1ULL << 1)               // ABI 6

struct ll_ruleset_attr {
	__u64 handled_access_fs;
	__u64 handled_access_net; // ABI 4
	__u64 scoped;             // ABI 6
};

struct ll_path_beneath_attr {
	__u64 allowed_access;
	__s32 parent_fd;
} __attribute__((packed));

// ll_allow adds a rule granting access beneath the object open at fd (or
// at path when fd < 0; a missing path is skipped). It returns 0 or -1.
static int ll_allow(int ruleset, int fd, const char *path, __u64 access, __u64 handled) {
	int own = -1;
	if (fd < 0) {
		own = fd = open(path, O_PATH | O_CLOEXEC);
		if (fd < 0)
			return errno == ENOENT ? 0 : -1;
	}
	struct stat st;
	if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode))
		access &= LL_FS_EXECUTE | LL_FS_WRITE_FILE | LL_FS_READ_FILE | LL_FS_TRUNCATE | LL_FS_IOCTL_DEV;
	struct ll_path_beneath_attr pb = {.allowed_access = access & handled, .parent_fd = fd};
	long rc = syscall(__NR_landlock_add_rule, ruleset, LL_RULE_PATH_BENEATH, &pb, 0);
	int err = errno;
	if (own >= 0)
		close(own);
	errno = err;
	return rc < 0 ? -1 : 0;
}

// landlock restricts the file system to what ferry touches once
// sandboxed: it reads /etc and /run (resolv.conf, when stage 1 found no
// upstream; the time zone) and the resolv.conf target bound elsewhere,
// writes the --pcap file (rw_path), and removes the API socket from its
// directory (rmdir_fd) at exit. Nothing else: no reading the new root or
// anything reached through an inherited directory fd (the API socket's
// directory fd is a way out of the mount namespace that only Landlock
// closes), no creating files, no executing. With ABI 6, abstract UNIX
// sockets and signals are scoped to ferry's own domain too. The network is
// not restricted (ABI 4 could): ferry connects to whatever the guest asks
// for and binds the published ports, which change at run time.
// Best effort: the outcome is kept for ferry_sandbox_report.
static void landlock(const char *rw_path, int rmdir_fd, const char *resolv_canon) {
	long abi = syscall(__NR_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
	if (abi < 1) {
		snprintf(landlock_note, sizeof(landlock_note), "not offered by the kernel: %s", strerror(errno));
		return;
	}
	struct ll_ruleset_attr attr = {.handled_access_fs = LL_FS_ABI1};
	size_t size = sizeof(__u64);
	if (abi >= 2)
		attr.handled_access_fs |= LL_FS_REFER;
	if (abi >= 3)
		attr.handled_access_fs |= LL_FS_TRUNCATE;
	if (abi >= 5)
		attr.handled_access_fs |= LL_FS_IOCTL_DEV;
	if (abi >= 4)
		size = 2 * sizeof(__u64);
	if (abi >= 6) {
		attr.scoped = LL_SCOPE_ABSTRACT_UNIX_SOCKET;
		const char *sig = getenv(ENV_SANDBOX_SIGNALS);
		if (sig == NULL || strcmp(sig, "1") != 0)
			attr.scoped |= LL_SCOPE_SIGNAL;
		size = sizeof(attr);
	}
	__u64 h = attr.handled_access_fs;
	int rs = (int)syscall(__NR_landlock_create_ruleset, &attr, size, 0);
	if (rs < 0) {
		snprintf(landlock_note, sizeof(landlock_note), "create a ruleset (ABI %ld): %s", abi, strerror(errno));
		return;
	}
	const char *what = NULL;
	if (ll_allow(rs, -1, "/etc", LL_FS_READ_FILE | LL_FS_READ_DIR, h) < 0)
		what = "/etc";
	else if (ll_allow(rs, -1, "/run", LL_FS_READ_FILE | LL_FS_READ_DIR, h) < 0)
		what = "/run";
	else if (resolv_canon != NULL && ll_allow(rs, -1, resolv_canon, LL_FS_READ_FILE, h) < 0)
		what = resolv_canon;
	else if (rw_path != NULL && ll_allow(rs, -1, rw_path, LL_FS_READ_FILE | LL_FS_WRITE_FILE | LL_FS_TRUNCATE, h) < 0)
		what = rw_path;
	else if (rmdir_fd >= 0 && ll_allow(rs, rmdir_fd, NULL, LL_FS_REMOVE_FILE, h) < 0)
		what = "the API socket's directory";
	else if (syscall(__NR_landlock_restrict_self, rs, 0) < 0)
		what = "restrict_self";
	if (what != NULL)
		snprintf(landlock_note, sizeof(landlock_note), "%s: %s", what, strerror(errno));
	else
		landlock_abi = (int)abi;
	close(rs);
}

// ferry_sandbox_landlock tells the Go side which Landlock ABI the
// constructor applied (0: none; *note says why).
int ferry_sandbox_landlock(const char **note) {
	*note = landlock_note;
	return landlock_abi;
}

// glibc passes constructors main's arguments; they are needed to execute
// ferry again without the sandbox.
__attribute__((constructor)) static void ferry_sandbox(int argc, char **argv, char **envp) {
	(void)argc;
	(void)envp;
	const char *state = getenv(ENV_SANDBOX);
	if (state == NULL || *state == '\0')
		return;
	if (getenv(ENV_SANDBOX_FAILED) != NULL)
		return; // the fallback image: run as is
	const char *strict = getenv(ENV_SANDBOX_STRICT);
	if (strict == NULL || strcmp(strict, "1") != 0)
		fallback_argv = argv;

	// The file to bind writable (--pcap) and the API socket's directory.
	int rw_fd = -1, rmdir_fd = -1;
	char rw_path[PATH_MAX] = "";
	const char *v = getenv(ENV_SANDBOX_RW);
	if (v != NULL && *v != '\0') {
		const char *colon = strchr(v, ':');
		rw_fd = parse_fd(v);
		if (rw_fd < 0 || colon == NULL || colon[1] != '/' || strlen(colon + 1) >= sizeof(rw_path)) {
			errno = EINVAL;
			sandbox_die("bad " ENV_SANDBOX_RW, v);
		}
		snprintf(rw_path, sizeof(rw_path), "%s", colon + 1);
		fallback_fds[0] = rw_fd;
	}
	v = getenv(ENV_SANDBOX_RMDIR);
	if (v != NULL && *v != '\0' && (rmdir_fd = parse_fd(v)) < 0) {
		errno = EINVAL;
		sandbox_die("bad " ENV_SANDBOX_RMDIR, v);
	}

	enter_userns(getenv(ENV_SANDBOX_USERNS));

	if (unshare(CLONE_NEWNS) < 0)
		sandbox_fail("unshare the mount namespace", NULL);
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		sandbox_fail("make mounts private", NULL);

	// Open what goes into the new root before the tmpfs covers NEWROOT
	// (the resolv.conf target might lie below it).
	int etc = open("/etc", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (etc < 0)
		sandbox_fail("open", "/etc");
	fallback_fds[1] = etc;
	int run = open("/run", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (rw_fd >= 0) {
		// The inherited fd's mount belongs to the old mount namespace,
		// which bind mounts refuse as a source: open the path again here,
		// and check it is the same file.
		struct stat a, b;
		int fd = open(rw_path, O_PATH | O_CLOEXEC);
		if (fd < 0)
			sandbox_fail("open", rw_path);
		if (fstat(fd, &a) < 0 || fstat(rw_fd, &b) < 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
			close(fd);
			errno = ESTALE;
			sandbox_fail("open", rw_path);
		}
		close(rw_fd);
		fallback_fds[0] = rw_fd = fd;
	}
	char canon[PATH_MAX], named[PATH_MAX], link[PATH_MAX];
	int rc = -1;
	if (realpath("/etc/resolv.conf", canon) != NULL) {
		rc = open(canon, O_PATH | O_CLOEXEC);
		ssize_t n = readlink("/etc/resolv.conf", link, sizeof(link) - 1);
		named[0] = '\0';
		if (n > 0) {
			link[n] = '\0';
			if (link[0] == '/')
				snprintf(named, sizeof(named), "%s", link);
			else
				snprintf(named, sizeof(named), "/etc/%s", link);
		}
	}

	if (mount("tmpfs", NEWROOT, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755") < 0)
		sandbox_fail("mount a tmpfs on", NEWROOT);
	fallback_mounted = 1;
	bind(etc, NEWROOT "/etc", 1, 0);
	close(etc);
	fallback_fds[1] = -1;
	if (run >= 0) {
		bind(run, NEWROOT "/run", 1, 0);
		close(run);
	}
	if (rc >= 0) {
		resolv(rc, canon, named);
		close(rc);
	}
	if (rw_fd >= 0) {
		char dst[PATH_MAX + sizeof(NEWROOT)];
		snprintf(dst, sizeof(dst), NEWROOT "%s", rw_path);
		bind(rw_fd, dst, 0, 1);
		close(rw_fd);
		fallback_fds[0] = -1;
	}

	if (getenv(ENV_DEBUG_FAIL) != NULL) { // a test hook: see package sandbox
		errno = EPERM;
		sandbox_fail("pivot_root (failure forced by " ENV_DEBUG_FAIL ")", NULL);
	}
	if (mkdir(NEWROOT OLDROOT, 0700) < 0)
		sandbox_fail("mkdir", NEWROOT OLDROOT);
	if (syscall(SYS_pivot_root, NEWROOT, NEWROOT OLDROOT) < 0)
		sandbox_fail("pivot_root to", NEWROOT);
	fallback_argv = NULL; // no way back from here
	if (chdir("/") < 0)
		sandbox_die("chdir", "/");
	if (umount2(OLDROOT, MNT_DETACH) < 0)
		sandbox_die("detach the old root", NULL);
	if (rmdir(OLDROOT) < 0)
		sandbox_die("rmdir", OLDROOT);
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		sandbox_die("make the new root read-only", NULL);

	drop_caps();
	landlock(rw_fd >= 0 ? rw_path : NULL, rmdir_fd,
	         rc >= 0 && !under(canon, "/etc") && !under(canon, "/run") ? canon : NULL);
}
