// Package nodeengine is the Partita member: Node joins the cluster, runs
// the operation service, the proxies and the configured services, and
// keeps this member's partition replicas in line with the partition table
// the master publishes.
//
// An embedder uses Node's methods and spi.NodeEngine: New, Start,
// Shutdown, Terminate, its identity and members, its services, proxies,
// partitions and operations, its metrics (Registry, Handler), Ready and
// WaitClusterSafe. Node.Inspect reads internals (the table, the operation
// service, migration state) for tests, benchmarks and debugging.
//
// Inside, Node wires parts with one job each, sharing a clusterView (the
// member list and the table): routing (where partitions are, for the
// operation service), tables (installing newer tables), publisher (the
// master's table pushes and take-over gate), replicas (role changes,
// syncs, anti-entropy), migrations (this member's migration steps),
// safety (is the cluster safe), snapshots (partition data on the wire)
// and the membership loop. masterEngine adapts the node to the migration
// manager that plans and drives migrations while this member is master.
package nodeengine
