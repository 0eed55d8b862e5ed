package nodeengine_test

import (
	"context"
	"strings"
	"testing"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/nodeengine"
	"github.com/partita-go/partita/spi"
)

// unbacked is a service whose write names a backup operation that is not
// among its operation types.
type unbacked struct{}

type unbackedWrite struct{}

func (*unbackedWrite) Run(*spi.OpContext) error       { return nil }
func (*unbackedWrite) WriteData(*spi.Writer)          {}
func (*unbackedWrite) ReadData(r *spi.Reader) error   { return r.Err() }
func (*unbackedWrite) SyncBackupCount() int           { return 1 }
func (*unbackedWrite) AsyncBackupCount() int          { return 0 }
func (*unbackedWrite) ShouldBackup() bool             { return true }
func (*unbackedWrite) BackupOperation() spi.Operation { return &unbackedBackup{} }

type unbackedBackup struct{}

func (*unbackedBackup) Backup()                      {}
func (*unbackedBackup) Run(*spi.OpContext) error     { return nil }
func (*unbackedBackup) WriteData(*spi.Writer)        {}
func (*unbackedBackup) ReadData(r *spi.Reader) error { return r.Err() }

func (unbacked) OperationTypes() []spi.OperationType {
	return []spi.OperationType{{ID: 1, New: func() spi.Operation { return new(unbackedWrite) }}}
}

func init() { config.RegisterService("unbacked", func() spi.Service { return unbacked{} }) }

// A service whose backup operation type is not registered stops the
// member from starting, with an error naming the service and both types;
// the counter, enabled beside it in the default config, registers.
func TestStartRefusesUnregisteredBackupType(t *testing.T) {
	cfg := testConfig("127.0.0.1:0")
	cfg.Services = append(cfg.Services, config.ServiceConfig{Name: "Unbacked", Type: "unbacked", Enabled: true})
	n, err := nodeengine.New(cfg, nodeengine.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	err = n.Start(context.Background())
	if err == nil {
		n.Shutdown(context.Background())
		t.Fatal("a member started with a backup operation type that is not registered")
	}
	for _, want := range []string{`"Unbacked"`, "*nodeengine_test.unbackedWrite", "*nodeengine_test.unbackedBackup is not registered"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("start error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "CounterService") {
		t.Errorf("start error %q names the counter", err)
	}
}
