package testkit

import (
	"sync/atomic"

	"github.com/partita-go/partita/config"
	"github.com/partita-go/partita/spi"
)

// ResetCounter is a ManagedService that only counts its Reset calls: the
// engine calls Reset on every ManagedService of a member that merges into
// a larger cluster, once per merge. It is registered as service type
// "resetcount".
type ResetCounter struct{ resets atomic.Int64 }

func (s *ResetCounter) Init(spi.NodeEngine, spi.Properties) error { return nil }
func (s *ResetCounter) Shutdown(bool)                             {}
func (s *ResetCounter) Reset()                                    { s.resets.Add(1) }

// Resets returns how many times Reset was called.
func (s *ResetCounter) Resets() int64 { return s.resets.Load() }

func init() { config.RegisterService("resetcount", func() spi.Service { return new(ResetCounter) }) }

// ResetServices are the ResetCounter services AddResetCounters adds.
var ResetServices = []string{"ResetA", "ResetB"}

// AddResetCounters adds the ResetServices to cfg.
func AddResetCounters(cfg *config.Config) {
	for _, name := range ResetServices {
		cfg.Services = append(cfg.Services, config.ServiceConfig{Name: name, Type: "resetcount", Enabled: true})
	}
}
