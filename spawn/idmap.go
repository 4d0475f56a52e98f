package spawn

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
)

// mapIDs maps the caller to root in the user namespace of pid, plus the
// caller's subordinate ranges from /etc/subuid and /etc/subgid through
// newuidmap and newgidmap when both are there; otherwise only the caller,
// with setgroups denied, as an unprivileged process may.
func mapIDs(pid int) error {
	uid, gid := os.Getuid(), os.Getgid()
	if uid != 0 {
		if err := mapSubIDs(pid, uid, gid); err == nil {
			return nil
		}
	}
	proc := "/proc/" + strconv.Itoa(pid)
	if err := os.WriteFile(proc+"/uid_map", fmt.Appendf(nil, "0 %d 1\n", uid), 0); err != nil {
		return fmt.Errorf("map user ID %d in the new user namespace: %w", uid, err)
	}
	if err := os.WriteFile(proc+"/setgroups", []byte("deny"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("deny setgroups in the new user namespace: %w", err)
	}
	if err := os.WriteFile(proc+"/gid_map", fmt.Appendf(nil, "0 %d 1\n", gid), 0); err != nil {
		return fmt.Errorf("map group ID %d in the new user namespace: %w", gid, err)
	}
	return nil
}

// mapSubIDs maps the caller and its subordinate ranges with the setuid
// helpers of the uidmap package.
func mapSubIDs(pid, uid, gid int) error {
	// Names come from /etc/passwd and /etc/group (ferry is built with
	// osusergo); a user known only to NSS (LDAP, sssd) is looked up in the
	// subordinate-ID files by number.
	var userName, groupName string
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		userName = u.Username
	}
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		groupName = g.Name
	}
	subuid, err := subRange("/etc/subuid", userName, uid)
	if err != nil {
		return err
	}
	subgid, err := subRange("/etc/subgid", groupName, gid)
	if err != nil {
		subgid, err = subRange("/etc/subgid", userName, uid)
		if err != nil {
			return err
		}
	}
	p := strconv.Itoa(pid)
	for _, m := range []struct{ tool, id, start, count string }{
		{"newuidmap", strconv.Itoa(uid), subuid[0], subuid[1]},
		{"newgidmap", strconv.Itoa(gid), subgid[0], subgid[1]},
	} {
		out, err := exec.Command(m.tool, p, "0", m.id, "1", "1", m.start, m.count).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", m.tool, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// subRange returns the first "start count" range of name (or its numeric
// ID) in a subordinate-ID file; an empty name matches by ID only.
func subRange(path, name string, id int) ([2]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return [2]string{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(fields) != 3 || !(fields[0] == strconv.Itoa(id) || name != "" && fields[0] == name) {
			continue
		}
		return [2]string{fields[1], fields[2]}, nil
	}
	if name == "" {
		return [2]string{}, fmt.Errorf("%s: no range for ID %d", path, id)
	}
	return [2]string{}, fmt.Errorf("%s: no range for %s", path, name)
}
