package nodeengine

import (
	"github.com/partita-go/partita/migration"
	"github.com/partita-go/partita/operation"
	"github.com/partita-go/partita/partition"
)

// Inspector reads a member's internals for tests, benchmarks, the
// examples and debugging: its partition table, operation service and
// migration state. It is not the embedding API (that is Node's methods
// and spi.NodeEngine): what it shows follows the implementation and may
// change. Its methods may be called from any goroutine once Start
// returned.
type Inspector struct{ n *Node }

// Inspect returns the member's Inspector.
func (n *Node) Inspect() Inspector { return Inspector{n} }

// Table returns the member's current partition table (nil before one
// arrived). The table must not be modified.
func (i Inspector) Table() *partition.Table { return i.n.view.table.Load() }

// OperationService returns the member's concrete operation service.
func (i Inspector) OperationService() *operation.Service { return i.n.ops }

// IsMaster reports whether the member is the oldest, the one that owns
// the partition table.
func (i Inspector) IsMaster() bool { return i.n.view.isMaster() }

// MigrationInFlight reports whether the member takes part in a partition
// migration now or, on the master, has migrations left to plan or run.
func (i Inspector) MigrationInFlight() bool { return i.n.migrating() }

// MigrationsInFlight describes the member's side of each migration in
// flight, one line per partition (for logs and test failures).
func (i Inspector) MigrationsInFlight() []string { return i.n.migs.inFlight.describe() }

// MigrationStats returns what the member's migration manager did while it
// was master.
func (i Inspector) MigrationStats() migration.Stats { return i.n.mgr.Stats() }
