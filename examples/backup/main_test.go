package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The counter is incremented on its owner and its backup, the owner is
// killed, and the survivor serves the value the backup kept.
func TestRun(t *testing.T) {
	text := runExample(t, -1)
	checkStory(t, text, counterName)
}

// The same story with a counter owned by member 0 and one owned by member
// 1: the example works whichever member owns the counter (and so is
// killed).
func TestRunEitherOwner(t *testing.T) {
	for _, owner := range []int{0, 1} {
		t.Run(fmt.Sprintf("owner%d", owner), func(t *testing.T) {
			text := runExample(t, owner)
			m := regexp.MustCompile(`(?m)^(\S+): partition \d+, owner member (\d)`).FindStringSubmatch(text)
			if m == nil {
				t.Fatalf("owner not printed:\n%s", text)
			}
			if m[2] != fmt.Sprint(owner) {
				t.Errorf("%s is owned by member %s, want %d", m[1], m[2], owner)
			}
			checkStory(t, text, m[1])
		})
	}
}

// runExample runs the example with ownedBy set to owner and returns its
// output.
func runExample(t *testing.T, owner int) string {
	t.Helper()
	ownedBy = owner
	t.Cleanup(func() { ownedBy = -1 })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if testing.Verbose() {
		t.Logf("output:\n%s", out.String())
	}
	return out.String()
}

// checkStory checks, in order: the owner and backup printed, the increment
// on the owner and its backup on the other member, "<name>: 1", the owner
// killed, "<name> after failover: 1", the second increment on the former
// backup, "<name>: 2" and Finished.
func checkStory(t *testing.T, text, name string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("output:\n%s", text)
		}
	}()
	lines := strings.Split(text, "\n")
	q := regexp.QuoteMeta(name)
	where := regexp.MustCompile(`^` + q + `: partition \d+, owner member \d \((\S+)\), backup on member \d \((\S+)\)$`)
	executing := regexp.MustCompile(`msg="Executing ` + q + `\.inc\(\) on: (\S+)"`)
	backup := regexp.MustCompile(`msg="Executing backup ` + q + `\.inc\(\) on: (\S+)"`)
	killed := regexp.MustCompile(`^killed member \d \((\S+)\), the owner$`)

	// find returns the index and submatch of the first line at or after
	// from that re matches, or -1.
	find := func(from int, re *regexp.Regexp) (int, string) {
		for i := from; i < len(lines); i++ {
			if m := re.FindStringSubmatch(lines[i]); m != nil {
				return i, m[len(m)-1]
			}
		}
		return -1, ""
	}
	exact := func(from int, s string) int {
		if from < 0 {
			return -1
		}
		if i := slices.Index(lines[from:], s); i >= 0 {
			return from + i
		}
		return -1
	}

	iWhere := -1
	var ownerAddr, backupAddr string
	for i, l := range lines {
		if m := where.FindStringSubmatch(l); m != nil {
			iWhere, ownerAddr, backupAddr = i, m[1], m[2]
			break
		}
	}
	if iWhere < 0 {
		t.Fatalf("owner and backup of %s not printed", name)
	}
	if ownerAddr == backupAddr {
		t.Fatalf("owner and backup are both %s", ownerAddr)
	}

	iExec, execAddr := find(iWhere, executing)
	iBackup, backupExecAddr := find(iWhere, backup)
	iOne := exact(iWhere, name+": 1")
	switch {
	case iExec < 0:
		t.Fatalf("no %q line", "Executing "+name+".inc()")
	case iBackup < 0:
		t.Fatalf("no %q line", "Executing backup "+name+".inc()")
	case iOne < 0:
		t.Fatalf("no %q line", name+": 1")
	case iExec > iOne || iBackup > iOne:
		t.Errorf("the increment and its backup are not logged before %q", name+": 1")
	}
	if execAddr == backupExecAddr {
		t.Errorf("the increment and its backup both ran on %s", execAddr)
	}
	if execAddr != ownerAddr || backupExecAddr != backupAddr {
		t.Errorf("increment on %s and backup on %s, want owner %s and backup %s", execAddr, backupExecAddr, ownerAddr, backupAddr)
	}
	if n := strings.Count(text, "Executing backup "+name+".inc()"); n != 1 {
		t.Errorf("backup of %s.inc() logged %d times, want 1 (no backup once alone)", name, n)
	}

	iKilled, killedAddr := find(iOne, killed)
	if iKilled < 0 {
		t.Fatalf("no %q line after %q", "killed member ... the owner", name+": 1")
	}
	if killedAddr != ownerAddr {
		t.Errorf("killed %s, want the owner %s", killedAddr, ownerAddr)
	}
	iFailover := exact(iKilled, name+" after failover: 1")
	iTwo := exact(iFailover, name+": 2")
	iFinished := exact(iTwo, "Finished")
	switch {
	case iFailover < 0:
		t.Fatalf("no %q after the kill", name+" after failover: 1")
	case iTwo < 0:
		t.Fatalf("no %q after %q", name+": 2", name+" after failover: 1")
	case iFinished < 0:
		t.Fatalf("no Finished after %q", name+": 2")
	}
	iExec2, exec2Addr := find(iFailover, executing)
	if iExec2 < 0 || iExec2 > iTwo {
		t.Errorf("the second increment is not logged before %q", name+": 2")
	} else if exec2Addr != backupAddr {
		t.Errorf("second increment ran on %s, want the former backup %s", exec2Addr, backupAddr)
	}
}
