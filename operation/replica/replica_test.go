package replica

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// run plays a scenario on a State of backups named by their versions.
// Each step is one command and the line it must print:
//
//	offer V        -> apply | covered | hold [ask] [overflow N]
//	applied V / failed -> version V / ask|-
//	drain [failAt] -> the versions handed, "c" marking covered ones
//	synced V       -> drained ...; ask PAUSE | -
//	syncfailed backup|gone -> ask PAUSE | - ; dropped N
//	retrydue, promote, reset, adopt V, mark, version, insync V
func run(t *testing.T, steps [][2]string) {
	t.Helper()
	var s State[int64]
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
		drained := func(failAt int64) (func(int64, Step) bool, *[]string) {
			var got []string
			return func(v int64, step Step) bool {
				switch step {
				case Covered:
					got = append(got, fmt.Sprintf("%dc", v))
					return true
				case Superseded:
					got = append(got, fmt.Sprintf("%ds", v))
					return true
				}
				got = append(got, strconv.FormatInt(v, 10))
				if v == failAt {
					s.Failed()
					return false
				}
				s.Applied(v)
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
			step, ask, overflow := s.Offer(arg(1), arg(1))
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
			out = fmt.Sprintf("%s; dropped %d", askPause(ask, pause), len(drop))
		case "retrydue":
			out = strconv.FormatBool(s.RetryDue())
		case "promote":
			s.Promote()
			out = fmt.Sprintf("version %#x", s.Version())
		case "reset":
			held, _ := s.Reset()
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
		default:
			t.Fatalf("step %d: unknown command %q", i, st[0])
		}
		if out != st[1] {
			t.Fatalf("step %d %q: got %q, want %q", i, st[0], out, st[1])
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
		{"mark syncing once", [][2]string{
			{"mark", "true"}, {"mark", "false"}, {"version", "0 syncing=true behind=true"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { run(t, tc.steps) })
	}
}

// Past MaxHeld held backups, the held ones are dropped (the caller fails
// them; their primary re-sends) and the new one is held.
func TestHeldOverflow(t *testing.T) {
	var s State[int64]
	for v := int64(2); v < 2+MaxHeld; v++ {
		if step, _, over := s.Offer(v, v); step != Hold || over != nil {
			t.Fatalf("offer %d: %v, overflow %d", v, step, len(over))
		}
	}
	step, ask, over := s.Offer(2+MaxHeld, 2+MaxHeld)
	if step != Hold || !ask || len(over) != MaxHeld {
		t.Fatalf("offer past the bound: %v ask %v overflow %d, want hold, ask, %d", step, ask, len(over), MaxHeld)
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
