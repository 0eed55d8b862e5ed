package spi

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers test them with errors.Is; the engine wraps them
// with context using %w. The first four are retryable: Invoke retries them
// with back-off until the context's deadline, so a caller sees them only when
// that deadline passes.
var (
	// ErrWrongTarget means the member that received a partition operation
	// does not own that partition (its table is newer or older than the
	// caller's). Retryable.
	ErrWrongTarget = errors.New("partita: wrong target: member does not own the partition")

	// ErrPartitionMigrating means the partition is being migrated and
	// rejects operations until the migration ends. Retryable.
	ErrPartitionMigrating = errors.New("partita: partition is migrating")

	// ErrMemberLeft means the member the operation was sent to left the
	// cluster (or its connection broke) before it answered. Retryable.
	ErrMemberLeft = errors.New("partita: target member left the cluster")

	// ErrNotReady means this member has not joined a cluster or has not yet
	// received a partition table. Retryable.
	ErrNotReady = errors.New("partita: member not ready: no partition table yet")

	// ErrTimeout means the invocation's context ended before a response
	// arrived. The error also wraps the context's error.
	ErrTimeout = errors.New("partita: operation timed out")

	// ErrOverloaded means a queue the operation had to enter was full.
	ErrOverloaded = errors.New("partita: member overloaded")

	// ErrShutdown means the member is shutting down or has shut down.
	ErrShutdown = errors.New("partita: member is shut down")

	// ErrUnknownService means no service of that name is enabled on the
	// member that was asked.
	ErrUnknownService = errors.New("partita: unknown service")

	// ErrUnknownOperation means the receiving member has no factory for the
	// operation's type id.
	ErrUnknownOperation = errors.New("partita: unknown operation type")

	// ErrProtocol means a frame could not be decoded or broke the protocol
	// (bad length, bad kind, trailing bytes, wrong handshake).
	ErrProtocol = errors.New("partita: protocol error")

	// ErrClusterMismatch means a peer speaks for another cluster name or
	// another protocol version.
	ErrClusterMismatch = errors.New("partita: peer belongs to another cluster or protocol version")

	// ErrIndeterminate means the operation may or may not have run: the
	// member it was sent to left before answering, and too long has passed
	// since the first attempt for a retry to be answered from the
	// exactly-once record (operations.dedup-window).
	ErrIndeterminate = errors.New("partita: outcome unknown: the target left after the operation was sent")

	// ErrBackupTimeout means the operation ran on its partition's primary
	// but a synchronous backup replica, still a member, did not
	// acknowledge it within operations.backup-ack-timeout. The write is
	// not acknowledged: it stays on the primary, and it may be lost if the
	// primary fails before the backup catches up. Errors wrapping it also
	// match ErrIndeterminate.
	ErrBackupTimeout error = backupTimeout{}

	// ErrInProgress means a retried operation's first attempt is still
	// running (its synchronous backups are not all acknowledged yet).
	// Retryable.
	ErrInProgress = errors.New("partita: the operation's first attempt is still in progress")

	// ErrNoSuchMember means the member named as a target is not in the
	// member list.
	ErrNoSuchMember = errors.New("partita: no such member")

	// ErrSplitBrainProtection means the operation was refused before it
	// ran because this member's side of the cluster has fewer members
	// than the service requires (the service's
	// split-brain-protection.min-size, for the reads or the writes its
	// protect-on names). Nothing was applied. The engine does not retry
	// it: the side stays too small until members join or come back, which
	// takes failure detection and a join, so the caller decides. It is
	// raised by the member that would run the operation, or at once by
	// the caller whose own member list is too small, and matches with
	// errors.Is across members.
	ErrSplitBrainProtection = errors.New("partita: split-brain protection: too few members for this service")
)

// IsRetryable reports whether err is one Invoke retries on its own: the
// operation was not applied and may succeed on another attempt.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrWrongTarget) || errors.Is(err, ErrPartitionMigrating) ||
		errors.Is(err, ErrMemberLeft) || errors.Is(err, ErrNotReady) || errors.Is(err, ErrInProgress)
}

// RemoteError is an error raised on another member while it handled an
// operation. Message is the remote error's text. Err is the matching sentinel
// when the remote error wrapped one (so errors.Is(err, ErrWrongTarget) works
// across members), nil for an application error returned by Run.
type RemoteError struct {
	Member  string // address of the member that raised the error
	Message string
	Err     error
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("remote error from %s: %s", e.Member, e.Message)
}

// Unwrap returns the sentinel the remote error wrapped, or nil.
func (e *RemoteError) Unwrap() error { return e.Err }

// backupTimeout is ErrBackupTimeout: a sentinel of its own that also
// matches ErrIndeterminate.
type backupTimeout struct{}

func (backupTimeout) Error() string {
	return "partita: outcome unknown: a synchronous backup was not acknowledged in time"
}

func (backupTimeout) Is(target error) bool { return target == ErrIndeterminate }
