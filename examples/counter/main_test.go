package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The example prints Round 1 with every counter at 1, then Round 2 with
// every counter at 2, each increment logged by the member that ran it.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	text := out.String()
	lines := strings.Split(text, "\n")
	r1, r2, fin := slices.Index(lines, "Round 1"), slices.Index(lines, "Round 2"), slices.Index(lines, "Finished")
	if r1 < 0 || r2 < r1 || fin < r2 {
		t.Fatalf("output lacks Round 1, Round 2 and Finished in that order:\n%s", text)
	}
	round1, round2 := lines[r1:r2], lines[r2:fin]
	for _, name := range counterNames {
		if !slices.Contains(round1, name+": 1") {
			t.Errorf("Round 1 lacks %q", name+": 1")
		}
		if !slices.Contains(round2, name+": 2") {
			t.Errorf("Round 2 lacks %q", name+": 2")
		}
		if n := strings.Count(text, "Executing "+name+".inc() on: "); n != 2 {
			t.Errorf("%s.inc() logged %d times, want 2", name, n)
		}
		if !strings.Contains(text, "\n"+name+": partition ") {
			t.Errorf("owner of %s not printed", name)
		}
	}
	// The four counters land on both members.
	if !strings.Contains(text, "owned by member 0") || !strings.Contains(text, "owned by member 1") {
		t.Errorf("the counters do not land on both members")
	}
	if n := strings.Count(text, "CounterService.shutdown"); n != 2 {
		t.Errorf("CounterService.shutdown logged %d times, want 2 (one per member)", n)
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}
