package spi

// Operation is a unit of work that runs on one member: on the owner of a
// partition for Invoke, or on a chosen member for InvokeOnMember.
//
// An operation is created by the caller, encoded with WriteData when it must
// travel, decoded on the target from a fresh value made by the factory that
// its service registered (see OperationProvider), and run there. When the
// target is the calling member the same value runs without being encoded.
type Operation interface {
	// Run does the work. For a partition operation it runs as the
	// partition's executor (on its goroutine, or in its place for a
	// NonBlockingOperation), never concurrently with another operation of
	// the same partition, so per-partition state needs no lock. An
	// operation of InvokeOnMember runs on a generic executor, where
	// generic operations may run at the same time: state they share needs
	// a lock. Run must not block on remote calls, nor call
	// RunOnPartition. The OpContext is valid only during Run.
	Run(ctx *OpContext) error

	// WriteData encodes the operation's fields. It is called on the
	// goroutine that sends the operation, often under the lock of the
	// connection it is written to, and possibly several times, at the
	// same time on several goroutines (every attempt of an invocation,
	// and every backup replica and re-send of a backup, encode the same
	// value): it must only read the operation, and must not block.
	WriteData(w *Writer)

	// ReadData decodes what WriteData wrote, into a fresh value from the
	// type's factory, on the target: on the reader goroutine of the
	// connection the operation arrived on (on the partition's executor
	// for the replication operations of a migration or a replica sync).
	// It must not block. r is valid only during the call (the engine
	// reuses it); keep copies, never r itself.
	ReadData(r *Reader) error
}

// NonBlockingOperation is an Operation whose Run (and Response) never
// wait: no network or disk I/O, no channel, no lock that another goroutine
// can hold for long, no invocation, no RunOnPartition. Reading and writing the partition's
// own state, reading the engine, and logging are fine.
//
// The engine may then run it on the goroutine that has it at hand, the
// invoking caller's or the goroutine reading the connection it came on,
// when its partition's executor has nothing queued or running, instead of
// handing it to the executor goroutine and back. It still runs as that
// executor: never beside another operation of the same partition, after
// everything queued before it, with OpContext.Executor set to that
// executor, and its answer waits for the synchronous backups of earlier
// writes as on the executor (see BackupAwareOperation). The saving is a
// goroutine hand-off or two per operation (docs/performance.md).
//
// The promise matters: an operation that waits there holds its caller
// past the invocation's deadline (nothing can stop a Run), or stops every
// frame behind it on its connection. Operations that may wait must not
// implement this; they run on the executor goroutine as before.
type NonBlockingOperation interface {
	Operation
	// NonBlocking marks the type; it is never called.
	NonBlocking()
}

// MutatingOperation lets an operation say whether it is a write, for
// split-brain protection (a service's split-brain-protection.protect-on:
// read, write or read-write). Without it an operation is a write when it
// is a BackupAwareOperation and a read otherwise; implement it to say
// otherwise: a write without backups (Mutates true), or a backup-aware
// operation that only reads (Mutates false).
//
// Mutates is called on the member that runs the operation before Run,
// and on the caller before sending it, on any goroutine; it must only
// read the operation's own fields, and return the same answer each time.
// Engine operations and backup operations are never refused.
type MutatingOperation interface {
	Operation
	Mutates() bool
}

// ResponseOperation is an Operation that returns a value to the caller.
// Response is called right after a successful Run, still as the
// partition's executor; the answer may leave later (see
// BackupAwareOperation), so the value must not change after Response
// returns. Remote responses must be nil, bool, int, int64, uint64, float64,
// string or []byte, unless the operation is also a ResponseCodec.
//
// When the service registers, Response is also called once on a value from
// the type's New, never run, to learn the response's type: it must not
// panic there, and a type it returns that is none of the above (with no
// ResponseCodec) is refused, so Node.Start fails naming it. A response
// whose type only shows after Run (nil from the fresh value) is checked
// when it is sent.
//
// An Operation that is not a ResponseOperation is a no-response operation:
// Invoke returns nil and the error of Run.
type ResponseOperation interface {
	Operation
	Response() any
}

// ResponseCodec lets an operation encode a response of its own type.
// WriteResponse runs on the target after Response, with the value Response
// returned, possibly more than once (the exactly-once record keeps the
// response encoded too), on whichever goroutine encodes or sends it (the
// executor, a
// connection's reader that received the last backup ack, the one that
// releases a held answer), often under the connection's lock.
// ReadResponse runs where a response is decoded: on the caller's member
// when the answer arrives (on the value the caller invoked, on a
// connection's reader or a backup's executor), and on the primary when a
// retry is answered from the exactly-once record (on the retry's value,
// as the partition's executor). Neither may block.
type ResponseCodec interface {
	WriteResponse(w *Writer, response any)
	ReadResponse(r *Reader) (any, error)
}

// OperationType names one decodable operation type of a service.
//
// Registration (during Node.Start) checks each type on a value from New:
// a BackupAwareOperation's BackupOperation must return one of the
// service's types, and a ResponseOperation's Response must be encodable
// (see ResponseOperation). A type that fails, or whose BackupOperation or
// Response panics on that value, stops the member from starting with an
// error naming the service and the types.
type OperationType struct {
	// ID is unique within the service (not across services).
	ID uint16
	// New returns a zero value of the operation, ready for ReadData.
	New func() Operation
}

// OperationProvider is implemented by a service whose operations travel
// between members. OperationTypes is called once, on the goroutine of
// Node.Start, before Init; every member must return the same ids for the
// same types.
type OperationProvider interface {
	OperationTypes() []OperationType
}

// OpContext is what an operation sees while it runs.
type OpContext struct {
	// Engine is the node engine of the member running the operation.
	Engine NodeEngine
	// Service is the service instance the operation belongs to.
	Service Service
	// PartitionID is the partition the operation runs on, -1 for an
	// operation on the generic executor.
	PartitionID int
	// Caller is the address of the member that sent the operation (this
	// member's own address for a local call).
	Caller string
	// Executor is the index of the executor running the operation
	// (partition p runs on executor p % N), also when a
	// NonBlockingOperation runs in its place; -1 on a generic executor.
	Executor int
	// ReplicaIndex is 0 for an operation on the primary, i for a backup
	// operation on backup replica i.
	ReplicaIndex int
	// Invocation identifies the invocation the operation runs for, the
	// same on all its attempts; zero for a backup operation and for an
	// operation that is not on a partition.
	Invocation InvocationID
	// Retried reports that a BackupAwareOperation runs for a retry that
	// the partition's exactly-once record does not hold: an earlier
	// attempt's answer was lost and the primary it went to is gone, so
	// that attempt ran nowhere this cluster remembers. Across a split
	// brain it may have run on the other side, which then lists it among
	// its NodeEngine.RecordedInvocations: a service that can cancel what a
	// retried run did (the counter counts it under an origin of its own)
	// merges without counting it twice. See SplitBrainHandlerService.
	Retried bool
}

// InvocationID identifies one invocation of an operation on a partition
// across its attempts: the invoking member's incarnation and a sequence
// number it draws.
type InvocationID struct {
	Origin uint64
	Seq    uint64
}

// Zero reports whether id is no invocation.
func (id InvocationID) Zero() bool { return id.Origin == 0 && id.Seq == 0 }
