// Package spi is what a service author imports: the interfaces a
// user-defined service implements, the operations it sends between
// members, and the view of the member (NodeEngine) it is given. It is the
// Go edition of the SPI of Hazelcast's "User Defined Services" guide;
// package services/counter is that guide's CounterService written against
// it, and docs/guide.md walks through it step by step.
//
// A service is any Go value made by a factory registered with
// config.RegisterService. The node engine (package nodeengine) learns
// what it can do by type assertion, so a service implements only the
// interfaces it needs. This package holds no state and starts no
// goroutines: it is contracts, plus the Writer/Reader codec, Properties
// and the sentinel errors (errors.go).
//
// # The guide's steps
//
// The steps of Hazelcast's guide as the counter follows them, with the
// sections of docs/guide.md in brackets:
//
//  1. Create the service class [1]: a Service, made a ManagedService
//     to get a lifecycle: Init receives the NodeEngine and the
//     service's Properties; Shutdown and Reset. Counter: Service (one
//     container per partition), Init, Shutdown and Reset in counter.go.
//  2. Enable it in the config [2, 3]: config.RegisterService(type,
//     factory) from an init function, and a `services:` entry of the
//     YAML file naming that type. Its `properties:` arrive in Init as
//     Properties; a ConfigParser also gets its `configuration:` node.
//     Counter: init and TypeName in counter.go; config/default.yaml
//     enables it.
//  3. Create the proxy [5]: a RemoteService hands out
//     DistributedObjects (CreateDistributedObject,
//     DestroyDistributedObject), which users get from
//     NodeEngine.Proxies() (ProxyRegistry.Get), one per name and member.
//     Counter: the Counter proxy, CreateDistributedObject and
//     DestroyDistributedObject in counter.go.
//  4. Create the operations [6, 7]: an Operation (Run, WriteData,
//     ReadData), a ResponseOperation when it returns a value, and an
//     OperationProvider whose OperationTypes let other members decode
//     them. The proxy's partition-aware call is OperationService.Invoke
//     on PartitionService.PartitionID(key): the operation runs on the
//     partition's owner, as the partition's executor (OpContext is what
//     it sees there). NonBlockingOperation is an optional promise that
//     saves goroutine hand-offs. Counter: Counter.Inc and Counter.Get,
//     IncOperation, GetOperation and OperationTypes in counter.go.
//  5. Partition migration [9]: a MigrationAwareService
//     (PrepareReplicationOperation, BeforeMigration, CommitMigration,
//     RollbackMigration, ClearPartitionReplica), told about each move by
//     a PartitionMigrationEvent and asked for its data by a
//     PartitionReplicationEvent. Counter: migration.go, with
//     CounterMigrationOperation carrying a partition's counters.
//  6. Create the backups [10]: the write is a BackupAwareOperation
//     (SyncBackupCount, AsyncBackupCount, ShouldBackup, BackupOperation),
//     and its BackupOperation repeats it on the backup replicas, where
//     OpContext.ReplicaIndex is above 0. Counter: IncOperation's four
//     methods and IncBackupOperation in counter.go.
//  7. Split brain [12] (beyond Hazelcast's guide): a
//     SplitBrainHandlerService's PrepareMerge hands a partition's data
//     to the larger cluster as operations, which apply the service's
//     MergePolicy (NodeEngine.MergePolicy: the config's `merge-policy:`,
//     else the service's MergePolicyDefault, else put-if-absent; the
//     standard policies are in spi/mergepolicy) entry by entry. Counter:
//     splitbrain.go (PrepareMerge, CounterMergeOperation and its backup,
//     the counter-sum policy) and state.go (the PN-counter that makes the
//     merge lossless).
//
// PartitionLostListener is optional and belongs to no step. So is
// MutatingOperation: with split-brain protection in a service's config
// entry (split-brain-protection: min-size, protect-on), the engine refuses
// its reads, its writes or both with ErrSplitBrainProtection on a member
// that sees fewer members than required, and MutatingOperation lets an
// operation say which of the two it is (a BackupAwareOperation is a write
// by default, anything else a read).
//
// # Who calls what, on which goroutine
//
// The engine calls a service on these goroutines. "No remote calls"
// means nothing that waits for another member: no Invoke or
// InvokeOnMember, no ProxyRegistry.Get or Destroy, no IsClusterSafe.
//
//   - ConfigParser.ParseConfig, OperationProvider.OperationTypes, then
//     ManagedService.Init: once each, on the goroutine of Node.Start,
//     service by service in config order, after the member bound its
//     port and before its executors start and it joins the cluster. Start
//     waits for them; Init must not invoke operations or call
//     RunOnPartition (no executor runs yet, there is no partition table).
//   - Operation.Run, then ResponseOperation.Response and the
//     BackupAwareOperation methods: for Invoke, as the partition's
//     executor, one operation of the partition at a time in the order
//     they reached it: on the partition's executor goroutine or, for a
//     NonBlockingOperation whose executor is idle, in its place on the
//     invoking caller's goroutine or on the reader goroutine of the
//     connection it arrived on. For InvokeOnMember, on a generic executor
//     (two goroutines share one queue, so generic operations may run at
//     the same time as each other and as partition operations). No remote
//     calls and no RunOnPartition; a NonBlockingOperation does not wait at
//     all.
//   - BackupOperation.Run: on each backup member, as the partition's
//     executor in the same way, in the order the primary stamped the
//     backups, each once.
//   - Operation.WriteData: on the goroutine that sends (the invoking
//     caller, the primary's executor for backups, a retry's timer),
//     often under the connection's lock, possibly several times and at
//     the same time (every attempt and every backup replica encodes the
//     same value): it must only read the operation and never block.
//     ReadData: on the target, on the reader goroutine of the connection
//     (on the partition's executor for the replication operations of a
//     migration or a replica sync).
//   - MigrationAwareService methods: on the executor goroutine of the
//     event's partition, never beside an operation of that partition; no
//     remote calls.
//   - RemoteService.CreateDistributedObject: on the goroutine of the
//     first ProxyRegistry.Get of the name on this member, on a generic
//     executor when another member created the object, or on an engine
//     goroutine when a joining member learns the objects made before it;
//     under the proxy registry's lock, so no remote calls and no
//     ProxyRegistry calls. DestroyDistributedObject: on the goroutine of
//     ProxyRegistry.Destroy (DistributedObject.Destroy) on the member that
//     destroys the object, on a generic executor on the others; it reaches
//     partition data through RunOnPartition.
//   - PartitionLostListener.PartitionLost: on the master, on a goroutine
//     of the migration manager; it must not block.
//   - SplitBrainHandlerService.PrepareMerge: as the partition's executor
//     on each member of the merging side, once per partition it owns,
//     before Reset.
//     MergePolicy.Merge: wherever the service's merge operations call it, as the partition's
//     executor; it must not block. MergePolicyDefault.DefaultMergePolicy:
//     once, on the goroutine of Node.Start, before Init.
//   - ManagedService.Shutdown: once, on the goroutine of Node.Shutdown or
//     Node.Terminate (or of a Node.Start that failed after Init), in
//     reverse config order, once the executors have stopped.
//   - ManagedService.Reset: on a member whose cluster merges into a larger
//     one (split-brain healing), after its services' PrepareMerge, with
//     every partition refusing operations, on the goroutine of the merge
//     (a generic executor's or the master's), in config order.
//   - SplitBrainHandlerService.PrepareMerge: there, before Reset, once for
//     each partition the member owns, as that partition's executor.
//
// A service calls the engine through its NodeEngine, whose methods may be
// called from any goroutine and return at once. Three kinds of calls
// wait: OperationService.Invoke and InvokeOnMember wait for the answer
// (or the deadline); ProxyRegistry.Get and Destroy and
// PartitionService.IsClusterSafe ask every member; RunOnPartition does
// not wait for its function but waits for room in a full queue. Make them
// from goroutines of your own, such as a proxy's caller, never from a
// hook that runs as a partition's executor.
package spi
