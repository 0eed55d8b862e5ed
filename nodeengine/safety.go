package nodeengine

import (
	"context"
	"fmt"
	"slices"

	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/spi"
)

// safety answers whether the cluster is safe: every member holds the same
// table, none migrates or syncs, and every backup replica holds its
// primary's writes. It asks every member for its replica status
// (replicaStatusOp) and answers those questions for this member. Any
// goroutine calls it: the partition service (Node.isClusterSafe), the
// metrics collector, the debug view and the migration manager (statusAt).
type safety struct {
	view     *clusterView
	ops      *operation.Service
	replicas *replicas
	busy     func() string // why this member is busy: it migrates, syncs or, as master, has migrations to run ("" when not)
}

// replicaStatusOp returns a member's replica versions and why it is busy
// (migrating or syncing anything), for IsClusterSafe.
type replicaStatusOp struct{ status []byte }

func (op *replicaStatusOp) MessageKind() string          { return "replica.status" }
func (op *replicaStatusOp) Response() any                { return op.status }
func (op *replicaStatusOp) WriteData(*spi.Writer)        {}
func (op *replicaStatusOp) ReadData(r *spi.Reader) error { return r.Err() }
func (op *replicaStatusOp) Run(ctx *spi.OpContext) error {
	op.status = ctx.Service.(*Node).safety.status()
	return nil
}

// status encodes this member's replica status.
func (s *safety) status() []byte {
	w := spi.NewWriter(nil)
	w.WriteString(s.busy())
	var version int64
	if t := s.view.table.Load(); t != nil {
		version = t.Version
	}
	w.WriteVarint(version)
	for p := 0; p < s.view.count; p++ {
		w.WriteUvarint(uint64(s.ops.ReplicaVersion(p)))
		// A replica about to be reset waits for a copy already; the
		// pending reset is read first (it ends after the replica is
		// marked syncing). A member with no table holds no replica in
		// sync: one that dropped its table to merge answers for the
		// table of before (its data is in its merge data), and must not
		// be waited for as a replica in sync.
		w.WriteBool(version == 0 || s.replicas.resetPending(p) || s.ops.IsSyncing(p))
	}
	return w.Bytes()
}

// statusAt returns member id's replica versions and syncing flags, and
// why it is busy ("" when not). When address is not empty the member is
// asked there, once: a member memberlist declared dead, whose address the
// table holds.
func (s *safety) statusAt(ctx context.Context, id, address string) (busy string, tableVersion int64, versions []int64, syncing []bool, err error) {
	var b []byte
	if id == s.view.id {
		b = s.status()
	} else {
		var v any
		var err error
		if address != "" {
			v, err = s.ops.InvokeOnceAt(ctx, engineService, &replicaStatusOp{}, id, address)
		} else {
			v, err = s.ops.InvokeOnMember(ctx, engineService, &replicaStatusOp{}, id)
		}
		if err != nil {
			return "", 0, nil, nil, err
		}
		b, _ = v.([]byte)
	}
	r := spi.NewReader(b)
	busy, tableVersion = r.ReadString(), r.ReadVarint()
	versions, syncing = make([]int64, s.view.count), make([]bool, s.view.count)
	for p := range versions {
		versions[p], syncing[p] = int64(r.ReadUvarint()), r.ReadBool()
	}
	if err := r.Err(); err != nil {
		return "", 0, nil, nil, fmt.Errorf("replica status of %s: %w", id, err)
	}
	return busy, tableVersion, versions, syncing, nil
}

// isClusterSafe asks every member for its replica state and reports
// whether all hold the same table, none migrates or syncs, and every
// backup replica holds its primary's writes (see unsafe).
func (s *safety) isClusterSafe(ctx context.Context) (bool, error) {
	reason, err := s.unsafe(ctx)
	return reason == "" && err == nil, err
}

// unsafe asks every member for its replica state and says why the cluster
// is not safe, naming the member and partition of the first check that
// fails; it returns "" when all hold the same table, none migrates or
// syncs, and every backup replica holds its primary's writes. Under load
// backups are in flight, so a backup behind its primary in a first round
// of questions is asked again: it is safe when it then holds at least
// what its primary held in the first round, in the same epoch (a write
// missing on a backup for good keeps it behind, so it is never safe).
func (s *safety) unsafe(ctx context.Context) (string, error) {
	t := s.view.table.Load()
	if t == nil {
		return "no partition table yet", nil
	}
	first, reason, err := s.versions(ctx, t.Version)
	if reason != "" || err != nil {
		return reason, err
	}
	behind := func(want, have map[string][]int64, p int, o, b string) string {
		if want[o] == nil {
			return fmt.Sprintf("partition %d: its owner %s is not a member", p, o)
		}
		if have[b] == nil {
			return fmt.Sprintf("partition %d: its backup %s is not a member", p, b)
		}
		w, h := want[o][p], have[b][p]
		if h < w || h>>32 != w>>32 {
			return fmt.Sprintf("partition %d: backup on %s at version %s behind primary on %s at %s",
				p, b, replicaVersion(h), o, replicaVersion(w))
		}
		return ""
	}
	lagging := false
	for p, o := range t.Owners {
		for _, b := range t.BackupsOf(p) {
			if b == "" {
				continue
			}
			if first[o] == nil || first[b] == nil {
				return behind(first, first, p, o, b), nil // a replica on a member that is gone
			}
			if first[o][p] != first[b][p] {
				lagging = true
			}
		}
	}
	if !lagging {
		return "", nil
	}
	second, reason, err := s.versions(ctx, t.Version)
	if reason != "" || err != nil {
		return reason, err
	}
	for p, o := range t.Owners {
		for _, b := range t.BackupsOf(p) {
			if b == "" {
				continue
			}
			if r := behind(first, second, p, o, b); r != "" {
				return r, nil
			}
		}
	}
	return "", nil
}

// replicaVersion formats a replica version as epoch.sequence.
func replicaVersion(v int64) string { return fmt.Sprintf("%d.%d", v>>32, v&(1<<32-1)) }

// versions asks every member for its replica versions; reason says why
// not when one holds another table version, migrates or syncs.
func (s *safety) versions(ctx context.Context, tableVersion int64) (map[string][]int64, string, error) {
	versions := map[string][]int64{}
	for _, m := range s.view.memberList() {
		busy, tv, vs, syncing, err := s.statusAt(ctx, m.ID, "")
		if err != nil {
			return nil, "", fmt.Errorf("replica status of %s: %w", m.ID, err)
		}
		switch p := slices.Index(syncing, true); {
		case busy != "":
			return nil, fmt.Sprintf("member %s is busy: %s", m.ID, busy), nil
		case tv != tableVersion:
			return nil, fmt.Sprintf("member %s holds table version %d, not %d", m.ID, tv, tableVersion), nil
		case p >= 0:
			return nil, fmt.Sprintf("member %s syncs partition %d", m.ID, p), nil
		}
		versions[m.ID] = vs
	}
	return versions, "", nil
}
