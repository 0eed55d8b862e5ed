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
	// the same partition, so per-partition state needs no lock. Run must
	// not block on remote calls. The OpContext is valid only during Run.
	Run(ctx *OpContext) error

	// WriteData encodes the operation's fields.
	WriteData(w *Writer)

	// ReadData decodes what WriteData wrote. r is valid only during the
	// call (the engine reuses it); keep copies, never r itself.
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
// WriteResponse runs on the target after Response; ReadResponse runs on the
// caller, on the value the caller invoked, when the response arrives.
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
// between members. OperationTypes is called once during Start, before Init;
// every member must return the same ids for the same types.
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
	// NonBlockingOperation runs in its place.
	Executor int
	// ReplicaIndex is 0 for an operation on the primary, i for a backup
	// operation on backup replica i.
	ReplicaIndex int
}
