// The pre-runtime half of package nsenter. The kernel refuses setns(2) into
// another user namespace from a multithreaded process, and the Go runtime
// starts threads before main runs, so this constructor joins the target's
// namespaces while the process is still single-threaded. It does nothing
// unless ferry re-executed itself as a helper (see helper.go).

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef NS_GET_USERNS
#define NS_GET_USERNS 0xb701
#endif

// Keep in sync with helper.go.
#define ENV_NET "_FERRY_NSENTER_NET"
#define ENV_USER "_FERRY_NSENTER_USER"
#define ENV_SOCK "_FERRY_NSENTER_SOCK"
#define ENV_UNSHARE "_FERRY_NSENTER_UNSHARE"

static int report_fd = -1;

// fail reports a one-line error to the parent over the helper socket and exits.
static void fail(const char *fmt, ...) {
	char msg[512];
	va_list ap;
	msg[0] = 'E';
	va_start(ap, fmt);
	vsnprintf(msg + 1, sizeof(msg) - 1, fmt, ap);
	va_end(ap);
	if (report_fd >= 0)
		send(report_fd, msg, strlen(msg), MSG_NOSIGNAL);
	else
		fprintf(stderr, "ferry: %s\n", msg + 1);
	_exit(1);
}

// hint names the fix for the errors users meet when joining namespaces.
static const char *hint(int err) {
	if (err == EPERM || err == EACCES)
		return ": run ferry as the user who created the namespace";
	return "";
}

static int same_ns(int a, int b) {
	struct stat sa, sb;
	if (fstat(a, &sa) < 0 || fstat(b, &sb) < 0)
		return 0;
	return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

__attribute__((constructor)) static void ferry_nsenter(void) {
	const char *net = getenv(ENV_NET);
	if (net == NULL || *net == '\0')
		return;
	const char *sock = getenv(ENV_SOCK);
	if (sock != NULL)
		report_fd = atoi(sock);
	const char *user = getenv(ENV_USER);

	int netfd = open(net, O_RDONLY | O_CLOEXEC);
	if (netfd < 0)
		fail("open network namespace %s: %s%s", net, strerror(errno), hint(errno));

	int userfd = -1;
	if (user != NULL && *user != '\0') {
		userfd = open(user, O_RDONLY | O_CLOEXEC);
		if (userfd < 0)
			fail("open user namespace %s: %s", user, strerror(errno));
	} else {
		// The user namespace that owns the network namespace. EPERM means
		// it is not below ours: there is nothing to join then.
		userfd = ioctl(netfd, NS_GET_USERNS);
		if (userfd < 0 && errno != EPERM)
			fail("find the user namespace owning %s: %s", net, strerror(errno));
	}
	if (userfd >= 0) {
		int self = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
		if (self < 0)
			fail("open /proc/self/ns/user: %s", strerror(errno));
		if (!same_ns(self, userfd) && setns(userfd, CLONE_NEWUSER) < 0)
			fail("join the user namespace of %s: %s%s", net, strerror(errno), hint(errno));
		close(self);
		close(userfd);
	}
	if (setns(netfd, CLONE_NEWNET) < 0)
		fail("join network namespace %s: %s%s", net, strerror(errno), hint(errno));
	close(netfd);

	// Namespaces of the process's own (a mount namespace for `ferry run`)
	// can only be unshared while it is single-threaded, too.
	const char *flags = getenv(ENV_UNSHARE);
	if (flags != NULL && *flags != '\0' && unshare(atoi(flags)) < 0)
		fail("unshare namespaces: %s", strerror(errno));
}
