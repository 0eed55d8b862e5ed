package replica

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// copyOf is a backup in the scenarios: its version, and which copy of
// that version it is (0 for the first; printed V#N for N > 0).
type copyOf struct {
	v int64
	n int
}

func (b copyOf) String() string {
	if b.n == 0 {
		return strconv.FormatInt(b.v, 10)
	}
	return fmt.Sprintf("%d#%d", b.v, b.n)
}

// run plays a scenario on a State of backups named by their versions.
// Each step is one command and the line it must print:
//
//	offer V [N]    -> apply | covered | hold [ask] [overflow N]  (N: copy N of V)
//	applied V / failed -> version V / ask|-
//	drain [failAt] -> the versions handed, "c" marking covered ones
//	synced V       -> drained ...; ask PAUSE | -
//	syncfailed backup|gone -> ask PAUSE | - ; dropped N
//	retrydue, promote, reset, adopt V, mark, version, insync V, held
//
// Every backup offered must end as often as it was offered: applied,
// covered, superseded or failed (drained, or returned by a reset, an
// overflow or a failed copy), or be still held when the scenario ends.
func run(t *testing.T, steps [][2]string) {
	t.Helper()
	var s State[copyOf]
	ended := map[copyOf]int{}
	end := func(bs ...copyOf) {
		for _, b := range bs {
			ended[b]++
		}
	}
	offered := map[copyOf]int{}
	for i, st := range steps {
		f := strings.Fields(st[0])
		arg := func(k int) int64 {
			v, err := strconv.ParseInt(f[k], 0, 64)
			if err != nil {
				t.Fatalf("step %d %q: %v", i, st[0], err)
			}
			return v
		}
		var out string
		drained := func(failAt int64) (func(copyOf, Step) bool, *[]string) {
			var got []string
			return func(b copyOf, step Step) bool {
				end(b)
				switch step {
				case Covered:
					got = append(got, b.String()+"c")
					return true
				case Superseded:
					got = append(got, b.String()+"s")
					return true
				}
				got = append(got, b.String())
				if b.v == failAt {
					s.Failed()
					return false
				}
				s.Applied(b.v)
				return true
			}, &got
		}
		askPause := func(ask bool, pause time.Duration) string {
			if !ask {
				return "-"
			}
			return "ask " + pause.String()
		}
		switch f[0] {
		case "offer":
			b := copyOf{v: arg(1)}
			if len(f) > 2 {
				b.n = int(arg(2))
			}
			offered[b]++
			step, ask, overflow := s.Offer(b.v, b)
			end(overflow...)
			if step != Hold {
				end(b) // applied below, covered or superseded
			}
			out = [...]string{"apply", "covered", "hold", "superseded"}[step]
			if ask {
				out += " ask"
			}
			if len(overflow) > 0 {
				out += fmt.Sprintf(" overflow %d", len(overflow))
			}
		case "applied":
			s.Applied(arg(1))
			out = fmt.Sprintf("version %d", s.Version())
		case "failed":
			out = askPause(s.Failed(), 0)
		case "drain":
			failAt := int64(-1)
			if len(f) > 1 {
				failAt = arg(1)
			}
			fn, got := drained(failAt)
			s.Drain(fn)
			slices.Sort(*got)
			out = strings.Join(*got, " ")
		case "synced":
			fn, got := drained(-1)
			ask, pause := s.Synced(arg(1), fn)
			slices.Sort(*got)
			out = fmt.Sprintf("drained %s; %s", strings.Join(*got, " "), askPause(ask, pause))
		case "syncfailed":
			ask, pause, drop := s.SyncFailed(f[1] == "backup")
			end(drop...)
			out = fmt.Sprintf("%s; dropped %d", askPause(ask, pause), len(drop))
		case "retrydue":
			out = strconv.FormatBool(s.RetryDue())
		case "promote":
			s.Promote()
			out = fmt.Sprintf("version %#x", s.Version())
		case "reset":
			held, _ := s.Reset()
			end(held...)
			out = fmt.Sprintf("dropped %d; version %d", len(held), s.Version())
		case "adopt":
			s.Adopt(arg(1))
			out = fmt.Sprintf("version %#x", s.Version())
		case "mark":
			out = strconv.FormatBool(s.MarkSyncing())
		case "version":
			out = fmt.Sprintf("%d syncing=%v behind=%v", s.Version(), s.Syncing(), s.Behind())
		case "insync":
			out = strconv.FormatBool(s.InSync(arg(1)))
		case "held":
			out = strconv.Itoa(s.Held())
		default:
			t.Fatalf("step %d: unknown command %q", i, st[0])
		}
		if out != st[1] {
			t.Fatalf("step %d %q: got %q, want %q", i, st[0], out, st[1])
		}
	}
	held, _ := s.Reset()
	end(held...)
	for b, n := range offered {
		if ended[b] != n {
			t.Errorf("backup %v offered %d times ended %d times (applied, acknowledged, refused or failed)", b, n, ended[b])
		}
	}
}

func TestTransitions(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps [][2]string
	}{
		{"in order", [][2]string{
			{"offer 1", "apply"}, {"applied 1", "version 1"},
			{"offer 2", "apply"}, {"applied 2", "version 2"},
			{"version", "2 syncing=false behind=false"}, {"insync 2", "true"}, {"insync 3", "false"},
		}},
		{"stale is covered, not run", [][2]string{
			{"offer 1", "apply"}, {"applied 1", "version 1"},
			{"offer 1", "covered"}, {"offer 0", "covered"},
		}},
		{"gap holds and asks once", [][2]string{
			{"offer 3", "hold ask"}, {"offer 4", "hold"},
			{"version", "0 syncing=true behind=true"}, {"insync 0", "false"},
		}},
		{"the missing one fills the gap", [][2]string{
			{"offer 2", "hold ask"}, {"offer 3", "hold"},
			{"offer 1", "apply"}, {"applied 1", "version 1"},
			{"drain", "2 3"}, {"version", "3 syncing=true behind=true"},
		}},
		{"copy newer than the held ones covers them", [][2]string{
			{"offer 3", "hold ask"}, {"offer 4", "hold"},
			{"synced 5", "drained 3c 4c; -"}, {"version", "5 syncing=false behind=false"},
		}},
		{"copy older than the held ones: run the rest in order", [][2]string{
			{"offer 3", "hold ask"}, {"offer 4", "hold"},
			{"synced 2", "drained 3 4; -"}, {"version", "4 syncing=false behind=false"},
		}},
		{"copy leaves a hole: ask again at once, then after pauses", [][2]string{
			{"offer 5", "hold ask"},
			{"synced 2", "drained ; ask 0s"}, {"version", "2 syncing=true behind=true"},
			{"synced 3", "drained ; ask 20ms"},
			{"synced 3", "drained ; -"}, // a paused retry is pending
			{"retrydue", "true"},
			{"synced 4", "drained 5; -"}, {"version", "5 syncing=false behind=false"},
		}},
		{"copy older than the version keeps the version", [][2]string{
			{"offer 1", "apply"}, {"applied 1", "version 1"}, {"offer 2", "apply"}, {"applied 2", "version 2"},
			{"mark", "true"}, {"synced 1", "drained ; -"}, {"version", "2 syncing=false behind=false"},
		}},
		{"a failed run keeps the version and asks for a copy", [][2]string{
			{"offer 1", "apply"}, {"failed", "ask 0s"}, {"version", "0 syncing=true behind=true"},
			{"offer 1", "apply"}, {"failed", "-"}, // the re-send fails again: asked already
			{"synced 1", "drained ; -"}, {"version", "1 syncing=false behind=false"},
		}},
		{"a drain stops at a failed run", [][2]string{
			{"offer 2", "hold ask"}, {"offer 3", "hold"},
			{"offer 1", "apply"}, {"applied 1", "version 1"},
			{"drain 2", "2"}, {"version", "1 syncing=true behind=true"},
		}},
		{"failed copies back off while still a backup", [][2]string{
			{"offer 3", "hold ask"},
			{"syncfailed backup", "ask 0s; dropped 0"},
			{"syncfailed backup", "ask 20ms; dropped 0"},
			{"syncfailed backup", "-; dropped 0"}, // the paused one is pending
			{"retrydue", "true"},
			{"syncfailed backup", "ask 80ms; dropped 0"},
			{"version", "0 syncing=true behind=true"},
		}},
		{"a failed copy on a former backup drops the held ones", [][2]string{
			{"offer 3", "hold ask"}, {"offer 4", "hold"},
			{"syncfailed gone", "-; dropped 2"}, {"version", "0 syncing=false behind=false"},
			{"retrydue", "false"},
		}},
		{"a good copy resets the back-off", [][2]string{
			{"offer 3", "hold ask"},
			{"syncfailed backup", "ask 0s; dropped 0"}, {"syncfailed backup", "ask 20ms; dropped 0"},
			{"retrydue", "true"},
			{"synced 3", "drained 3c; -"},
			{"offer 5", "hold ask"}, {"syncfailed backup", "ask 0s; dropped 0"},
		}},
		{"promotion starts a new epoch; old-epoch copies are not in sync", [][2]string{
			{"offer 1", "apply"}, {"applied 1", "version 1"},
			{"promote", "version 0x100000000"},
			{"insync 1", "false"}, {"insync 0x100000000", "true"},
		}},
		{"a backup of the old epoch is held behind the new one's gap", [][2]string{
			{"adopt 7", "version 0x7"},
			{"offer 0x100000001", "hold ask"},
			{"synced 0x100000000", "drained 4294967297; -"}, {"version", "4294967297 syncing=false behind=false"},
		}},
		{"a backup of an older epoch is refused, not acknowledged", [][2]string{
			{"offer 1", "apply"}, {"applied 1", "version 1"},
			{"promote", "version 0x100000000"},
			{"offer 2", "superseded"}, {"offer 1", "superseded"},
			{"offer 0x100000001", "apply"},
		}},
		{"held backups of an older epoch are refused after a copy of a newer one", [][2]string{
			{"offer 3", "hold ask"},
			{"synced 0x100000000", "drained 3s; -"},
		}},
		{"reset forgets everything", [][2]string{
			{"offer 1", "apply"}, {"applied 1", "version 1"}, {"offer 3", "hold ask"},
			{"reset", "dropped 1; version 0"}, {"version", "0 syncing=false behind=false"},
			{"offer 1", "apply"},
		}},
		{"demotion: a primary made a backup starts over and waits for a copy", [][2]string{
			{"adopt 7", "version 0x7"}, {"promote", "version 0x100000000"},
			{"reset", "dropped 0; version 0"}, {"mark", "true"},
			{"version", "0 syncing=true behind=true"}, {"insync 0x100000000", "false"},
			{"offer 0x100000002", "hold"}, // the new primary's writes wait for the copy
			{"synced 0x100000001", "drained 4294967298; -"}, {"insync 0x100000002", "true"},
		}},
		// One version may come twice while the replica is behind: a
		// re-send while the first copy waits, a backup redirected to the
		// member that took its replica over after it got the write for
		// its own, or a table that named the member for two replicas
		// (the primary then waited backup-ack-timeout for the copy that
		// the second overwrote). Each copy ends: one runs, the other is
		// acknowledged as covered, or both are covered or failed.
		{"two copies of a held version: one runs, the other is covered", [][2]string{
			{"offer 3", "hold ask"}, {"offer 3 1", "hold"}, {"held", "2"},
			{"synced 2", "drained 3 3#1c; -"}, {"version", "3 syncing=false behind=false"}, {"held", "0"},
		}},
		{"two copies of a version a copy covers", [][2]string{
			{"offer 3", "hold ask"}, {"offer 3 1", "hold"}, {"offer 4", "hold"},
			{"synced 5", "drained 3#1c 3c 4c; -"},
		}},
		{"two copies of the first new-epoch write after a promotion", [][2]string{
			{"adopt 7", "version 0x7"},
			{"offer 0x100000001", "hold ask"}, {"offer 0x100000001 1", "hold"},
			{"synced 0x100000000", "drained 4294967297 4294967297#1c; -"},
		}},
		{"two copies of the missing one's successor", [][2]string{
			{"offer 2", "hold ask"}, {"offer 2 1", "hold"},
			{"offer 1", "apply"}, {"applied 1", "version 1"},
			{"drain", "2 2#1c"}, {"held", "0"},
		}},
		{"a failed run keeps the other copy held until a copy covers it", [][2]string{
			{"offer 2", "hold ask"}, {"offer 2 1", "hold"},
			{"offer 1", "apply"}, {"applied 1", "version 1"},
			{"drain 2", "2"}, {"held", "1"}, {"version", "1 syncing=true behind=true"},
			{"synced 2", "drained 2#1c; -"}, {"held", "0"},
		}},
		{"a copy arriving after its version ran is covered", [][2]string{
			{"offer 2", "hold ask"}, {"offer 1", "apply"}, {"applied 1", "version 1"},
			{"drain", "2"}, {"offer 2 1", "covered"},
		}},
		{"reset fails every copy", [][2]string{
			{"offer 3", "hold ask"}, {"offer 3 1", "hold"}, {"reset", "dropped 2; version 0"},
		}},
		{"a failed copy on a former backup fails every copy", [][2]string{
			{"offer 3", "hold ask"}, {"offer 3 1", "hold"}, {"syncfailed gone", "-; dropped 2"},
		}},
		{"mark syncing once", [][2]string{
			{"mark", "true"}, {"mark", "false"}, {"version", "0 syncing=true behind=true"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { run(t, tc.steps) })
	}
}

// Past MaxHeld held backups, copies of one version counted apart, the
// held ones are dropped (the caller fails them; their primary re-sends)
// and the new one is held.
func TestHeldOverflow(t *testing.T) {
	var s State[int64]
	for k := int64(0); k < MaxHeld; k++ {
		v := 2 + k/2 // two copies of each version
		if step, _, over := s.Offer(v, k); step != Hold || over != nil {
			t.Fatalf("offer %d: %v, overflow %d", v, step, len(over))
		}
	}
	if s.Held() != MaxHeld {
		t.Fatalf("Held() = %d, want %d", s.Held(), MaxHeld)
	}
	step, ask, over := s.Offer(2+MaxHeld, MaxHeld)
	if step != Hold || !ask || len(over) != MaxHeld {
		t.Fatalf("offer past the bound: %v ask %v overflow %d, want hold, ask, %d", step, ask, len(over), MaxHeld)
	}
	slices.Sort(over)
	for k, b := range over {
		if b != int64(k) {
			t.Fatalf("overflow lacks backup %d", k)
		}
	}
}

// Stamp numbers a primary's writes within its epoch.
func TestStamp(t *testing.T) {
	var s State[int64]
	s.Adopt(5)
	if v := s.Stamp(); v != 6 {
		t.Fatalf("Stamp after 5 = %d", v)
	}
	s.Promote()
	if v := s.Stamp(); v != 1<<32+1 {
		t.Fatalf("Stamp in the next epoch = %#x", v)
	}
}
