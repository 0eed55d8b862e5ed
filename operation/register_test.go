package operation

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/partita-go/partita/spi"
)

// writeOp is a backed-up write whose backup is whatever backup returns
// (given the value's state: ran is set by Run).
type writeOp struct {
	ran    bool
	backup func(ran bool) spi.Operation
	resp   any
}

func (o *writeOp) Run(*spi.OpContext) error       { o.ran = true; return nil }
func (o *writeOp) WriteData(*spi.Writer)          {}
func (o *writeOp) ReadData(r *spi.Reader) error   { return r.Err() }
func (o *writeOp) SyncBackupCount() int           { return 1 }
func (o *writeOp) AsyncBackupCount() int          { return 0 }
func (o *writeOp) ShouldBackup() bool             { return true }
func (o *writeOp) BackupOperation() spi.Operation { return o.backup(o.ran) }
func (o *writeOp) Response() any                  { return o.resp }

// writeBackupOp is writeOp's backup.
type writeBackupOp struct{}

func (writeBackupOp) Backup()                      {}
func (writeBackupOp) Run(*spi.OpContext) error     { return nil }
func (writeBackupOp) WriteData(*spi.Writer)        {}
func (writeBackupOp) ReadData(r *spi.Reader) error { return r.Err() }

// strangerOp is registered by no service.
type strangerOp struct{ writeBackupOp }

// answerOp responds with resp, encoded by codec when it has one.
type answerOp struct{ resp any }

func (o *answerOp) Run(*spi.OpContext) error     { return nil }
func (o *answerOp) WriteData(*spi.Writer)        {}
func (o *answerOp) ReadData(r *spi.Reader) error { return r.Err() }
func (o *answerOp) Response() any                { return o.resp }

type answerCodecOp struct{ answerOp }

func (o *answerCodecOp) WriteResponse(w *spi.Writer, v any) { w.WriteVarint(v.(pair).A) }
func (o *answerCodecOp) ReadResponse(r *spi.Reader) (any, error) {
	return pair{A: r.ReadVarint()}, r.Err()
}

func registerTypes(types ...spi.OperationType) error {
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7,
		PartitionThreads: 1, Routing: selfRouting{"self"}})
	return s.Register("store", nil, types)
}

// A backed-up operation type whose backup operation type is not
// registered, or whose response cannot travel, is refused when its
// service registers, with an error that names the service and the types;
// a backup registered after the type it backs up is fine.
func TestRegisterRefusesTypesThatCannotWork(t *testing.T) {
	backup := func(ran bool) spi.Operation { return writeBackupOp{} }
	stranger := func(ran bool) spi.Operation { return &strangerOp{} }
	writeType := func(b func(bool) spi.Operation, resp any) spi.OperationType {
		return spi.OperationType{ID: 1, New: func() spi.Operation { return &writeOp{backup: b, resp: resp} }}
	}
	backupType := spi.OperationType{ID: 2, New: func() spi.Operation { return writeBackupOp{} }}
	for _, c := range []struct {
		name  string
		types []spi.OperationType
		want  []string // in the error; none: accepted
	}{
		{"backup registered later", []spi.OperationType{writeType(backup, int64(0)), backupType}, nil},
		{"backup not registered", []spi.OperationType{writeType(stranger, int64(0)), backupType},
			[]string{`"store"`, "operation type 1 (*operation.writeOp)", "backup operation type *operation.strangerOp is not registered"}},
		{"backup type missing", []spi.OperationType{writeType(backup, int64(0))},
			[]string{`"store"`, "*operation.writeOp", "operation.writeBackupOp is not registered"}},
		{"nil backup", []spi.OperationType{writeType(func(bool) spi.Operation { return nil }, nil), backupType},
			[]string{`"store"`, "*operation.writeOp", "returned nil"}},
		{"backup panics", []spi.OperationType{writeType(func(bool) spi.Operation { panic("no state") }, nil), backupType},
			[]string{`"store"`, "*operation.writeOp", "panicked: no state"}},
		{"unencodable response", []spi.OperationType{writeType(backup, pair{}), backupType},
			[]string{`"store"`, "operation type 1 (*operation.writeOp)", "response type operation.pair has no codec"}},
		{"unencodable response, no backup", []spi.OperationType{
			{ID: 7, New: func() spi.Operation { return &answerOp{resp: []string{}} }}},
			[]string{`"store"`, "operation type 7 (*operation.answerOp)", "response type []string has no codec"}},
		{"response with a codec", []spi.OperationType{
			{ID: 7, New: func() spi.Operation { return &answerCodecOp{answerOp{resp: pair{}}} }}}, nil},
		{"built-in response", []spi.OperationType{
			{ID: 7, New: func() spi.Operation { return &answerOp{resp: []byte(nil)} }}}, nil},
		{"nil response", []spi.OperationType{
			{ID: 7, New: func() spi.Operation { return &answerOp{} }}}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := registerTypes(c.types...)
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("registered")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// oneBackupRouting owns every partition and has one backup replica, on
// a member nothing can reach.
type oneBackupRouting struct{}

func (oneBackupRouting) Owner(int) (string, string, bool)    { return "self", "local", true }
func (oneBackupRouting) MemberAddress(string) (string, bool) { return "", false }
func (oneBackupRouting) Backups(_ int, dst []Replica) []Replica {
	return append(dst, Replica{ID: "b", Address: "b:1"})
}
func (oneBackupRouting) ReplicaIndex(int) int { return 0 }

// The run-time check stays as a defence: a backup operation whose type
// is registered on a fresh value but not once the operation ran is not
// answered as a backed-up write; the caller gets an error naming it.
func TestUnregisteredBackupAtRunTimeIsAnError(t *testing.T) {
	s := New(Config{ClusterName: "dev", LocalID: "self", LocalAddress: "local", PartitionCount: 7,
		PartitionThreads: 1, Routing: oneBackupRouting{}})
	tricky := func(ran bool) spi.Operation {
		if ran {
			return &strangerOp{}
		}
		return writeBackupOp{}
	}
	if err := s.Register("store", nil, []spi.OperationType{
		{ID: 1, New: func() spi.Operation { return &writeOp{backup: tricky} }},
		{ID: 2, New: func() spi.Operation { return writeBackupOp{} }},
	}); err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.Invoke(ctx, "store", &writeOp{backup: tricky, resp: "ok"}, 3)
	if err == nil || !strings.Contains(err.Error(), "not backed up") || !strings.Contains(err.Error(), "*operation.strangerOp") {
		t.Fatalf("Invoke = %v; want an error naming the unregistered backup type", err)
	}
}
