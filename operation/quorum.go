package operation

import (
	"fmt"

	"github.com/partita-go/partita/spi"
	"github.com/prometheus/client_golang/prometheus"
)

// Split-brain protection: a service may need a member list of at least
// some size for its reads, its writes or both (config's
// split-brain-protection). Its operations are checked as its partition's
// executor, right before Run (executor.run: after the owner check and the
// exactly-once lookup, so a retry of a write that already ran is still
// answered), and once on the caller before the first attempt. The size is
// Config.Members, an atomic load in the node engine: no lock on the hot
// path, and a service without protection pays one comparison.

// protection is one service's split-brain protection (zero: none).
type protection struct {
	reads, writes int                // fewest members each needs; 0: any
	rejected      prometheus.Counter // partita_split_brain_protection_rejected_total{service}
}

// ProtectService makes service name's operations need at least reads
// (for its reads) and writes (for its writes) members in this member's
// list, itself included; 0 leaves them unprotected. Call it after
// Register and before Start; Config.Members must be set.
func (s *Service) ProtectService(name string, reads, writes int) error {
	if s.started.Load() {
		return fmt.Errorf("protect service %q: operation service already started", name)
	}
	e := s.byName[name]
	switch {
	case e == nil:
		return fmt.Errorf("protect service %q: not registered", name)
	case reads < 0 || writes < 0:
		return fmt.Errorf("protect service %q: negative minimum size", name)
	case (reads > 0 || writes > 0) && s.cfg.Members == nil:
		return fmt.Errorf("protect service %q: the operation service has no Config.Members", name)
	}
	e.protect = protection{reads: reads, writes: writes}
	if reads > 0 || writes > 0 {
		e.protect.rejected = s.m.splitBrainRejected.WithLabelValues(name)
	}
	return nil
}

// checkProtection returns spi.ErrSplitBrainProtection, counted, when op
// of svc needs more members than this member sees (spi.ErrNotReady while
// it has no member list yet), else nil.
func (s *Service) checkProtection(svc *serviceEntry, op spi.Operation) error {
	p := &svc.protect
	if p.reads == 0 && p.writes == 0 {
		return nil
	}
	need, kind := p.reads, "reads"
	if isWrite(op) {
		need, kind = p.writes, "writes"
	}
	if need == 0 {
		return nil
	}
	n := s.cfg.Members()
	switch {
	case n == 0:
		return fmt.Errorf("%w: no member list yet", spi.ErrNotReady)
	case n >= need:
		return nil
	}
	p.rejected.Inc()
	return fmt.Errorf("%w: service %q needs %d members for %s, member %s sees %d", spi.ErrSplitBrainProtection,
		svc.name, need, kind, s.cfg.LocalAddress, n)
}

// isWrite reports whether op is a write for split-brain protection: a
// spi.BackupAwareOperation, unless it is a spi.MutatingOperation that
// says otherwise.
func isWrite(op spi.Operation) bool {
	if m, ok := op.(spi.MutatingOperation); ok {
		return m.Mutates()
	}
	_, ok := op.(spi.BackupAwareOperation)
	return ok
}
