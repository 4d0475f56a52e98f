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
//     root is not special, and sets no_new_privs.
//
// Setting up namespaces must happen here because the kernel refuses setns(2)
// into a user namespace, and unshare(CLONE_NEWNS) after it, to a
// multithreaded process. Any failure ends the process with a message on
// stderr: ferry never runs half-sandboxed. Keep nsenter.c's behaviour
// independent of this file: the two constructors act on different variables.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

// NEWROOT is where the new root's tmpfs is mounted before pivot_root. The
// mount is private to the new mount namespace.
#define NEWROOT "/tmp"
#define OLDROOT "/.oldroot"

static void sandbox_die(const char *what, const char *arg) {
	int err = errno;
	fprintf(stderr, "ferry: sandbox: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(err));
	_exit(1);
}

static void write_file(const char *path, const char *s) {
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		sandbox_die("open", path);
	size_t n = strlen(s);
	if (write(fd, s, n) != (ssize_t)n)
		sandbox_die("write", path);
	close(fd);
}

static void enter_userns(const char *v) {
	if (v == NULL || *v == '\0')
		return; // ferry runs as root: dropping capabilities is enough
	if (strcmp(v, "new") == 0) {
		uid_t uid = geteuid();
		gid_t gid = getegid();
		char map[64];
		if (unshare(CLONE_NEWUSER) < 0)
			sandbox_die("create a user namespace", NULL);
		write_file("/proc/self/setgroups", "deny");
		snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)uid, (unsigned)uid);
		write_file("/proc/self/uid_map", map);
		snprintf(map, sizeof(map), "%u %u 1\n", (unsigned)gid, (unsigned)gid);
		write_file("/proc/self/gid_map", map);
		return;
	}
	char *end;
	long fd = strtol(v, &end, 10);
	if (*end != '\0' || fd < 0 || fd > INT_MAX) {
		errno = EINVAL;
		sandbox_die("bad " ENV_SANDBOX_USERNS, v);
	}
	if (setns((int)fd, CLONE_NEWUSER) < 0)
		sandbox_die("join the target's user namespace", NULL);
	close((int)fd);
}

// mkdirs creates path and its parents (mode 0755) below the new root.
static void mkdirs(char *path) {
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			sandbox_die("mkdir", path);
		*p = '/';
	}
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		sandbox_die("mkdir", path);
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
// inside the new root, recursively.
static void bind(int fd, const char *dst, int dir) {
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
		int f = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (f < 0)
			sandbox_die("create", path);
		close(f);
	}
	snprintf(src, sizeof(src), "/proc/self/fd/%d", fd);
	if (mount(src, path, NULL, MS_BIND | MS_REC, NULL) < 0)
		sandbox_die("bind mount into", path);
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
		bind(fd, dst, 0);
	}
	if (named[0] == '/' && strcmp(named, canon) != 0 && !under(named, "/etc") && !under(named, "/run")) {
		snprintf(dst, sizeof(dst), NEWROOT "%s", named);
		bind(fd, dst, 0);
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

__attribute__((constructor)) static void ferry_sandbox(void) {
	const char *state = getenv(ENV_SANDBOX);
	if (state == NULL || *state == '\0')
		return;
	enter_userns(getenv(ENV_SANDBOX_USERNS));

	if (unshare(CLONE_NEWNS) < 0)
		sandbox_die("unshare the mount namespace", NULL);
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		sandbox_die("make mounts private", NULL);

	// Open what goes into the new root before the tmpfs covers NEWROOT
	// (the resolv.conf target might lie below it).
	int etc = open("/etc", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (etc < 0)
		sandbox_die("open", "/etc");
	int run = open("/run", O_PATH | O_DIRECTORY | O_CLOEXEC);
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
		sandbox_die("mount a tmpfs on", NEWROOT);
	bind(etc, NEWROOT "/etc", 1);
	close(etc);
	if (run >= 0) {
		bind(run, NEWROOT "/run", 1);
		close(run);
	}
	if (rc >= 0) {
		resolv(rc, canon, named);
		close(rc);
	}

	if (mkdir(NEWROOT OLDROOT, 0700) < 0)
		sandbox_die("mkdir", NEWROOT OLDROOT);
	if (syscall(SYS_pivot_root, NEWROOT, NEWROOT OLDROOT) < 0)
		sandbox_die("pivot_root to", NEWROOT);
	if (chdir("/") < 0)
		sandbox_die("chdir", "/");
	if (umount2(OLDROOT, MNT_DETACH) < 0)
		sandbox_die("detach the old root", NULL);
	if (rmdir(OLDROOT) < 0)
		sandbox_die("rmdir", OLDROOT);
	if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		sandbox_die("make the new root read-only", NULL);

	drop_caps();
}
