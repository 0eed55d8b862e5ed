package config

import (
	"maps"
	"slices"
	"sync"

	"github.com/partita-go/partita/spi"
	"github.com/partita-go/partita/spi/mergepolicy"
)

// registry maps service type names to factories, like database/sql drivers.
var registry = struct {
	sync.RWMutex
	factories map[string]func() spi.Service
}{factories: map[string]func() spi.Service{}}

// RegisterService makes a service type available to the `type:` of a
// services entry. It is meant to be called from the init function of the
// package that implements the service, so that importing the package
// (often as import _ "...") is enough. It panics if typeName is empty,
// factory is nil, or typeName is already registered. It is safe for
// concurrent use.
func RegisterService(typeName string, factory func() spi.Service) {
	if typeName == "" {
		panic("config: RegisterService: empty type name")
	}
	if factory == nil {
		panic("config: RegisterService: nil factory for type " + typeName)
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.factories[typeName]; dup {
		panic("config: RegisterService: type " + typeName + " registered twice")
	}
	registry.factories[typeName] = factory
}

// ServiceFactory returns the factory registered for typeName.
func ServiceFactory(typeName string) (func() spi.Service, bool) {
	registry.RLock()
	defer registry.RUnlock()
	f, ok := registry.factories[typeName]
	return f, ok
}

// ServiceTypes returns the registered type names, sorted.
func ServiceTypes() []string {
	registry.RLock()
	defer registry.RUnlock()
	return slices.Sorted(maps.Keys(registry.factories))
}

// policies maps merge policy names to factories.
var policies = struct {
	sync.RWMutex
	factories map[string]func() spi.MergePolicy
}{factories: map[string]func() spi.MergePolicy{}}

func init() {
	for _, p := range mergepolicy.Standard() {
		RegisterMergePolicy(p.Name(), func() spi.MergePolicy { return p })
	}
}

// RegisterMergePolicy makes a merge policy available to the
// `merge-policy:` of a services entry (see spi.MergePolicy). The standard
// policies of spi/mergepolicy are registered under their names
// (put-if-absent, pass-through, discard, higher-value); a service
// registers its own from the init function of its package, as it
// registers its type. It panics if name is empty, factory is nil, name is
// already registered, or the policy factory makes is named otherwise. It
// is safe for concurrent use.
func RegisterMergePolicy(name string, factory func() spi.MergePolicy) {
	if name == "" {
		panic("config: RegisterMergePolicy: empty name")
	}
	if factory == nil {
		panic("config: RegisterMergePolicy: nil factory for policy " + name)
	}
	if got := factory().Name(); got != name {
		panic("config: RegisterMergePolicy: policy " + name + " calls itself " + got)
	}
	policies.Lock()
	defer policies.Unlock()
	if _, dup := policies.factories[name]; dup {
		panic("config: RegisterMergePolicy: policy " + name + " registered twice")
	}
	policies.factories[name] = factory
}

// MergePolicyFactory returns the factory registered for the merge policy
// name.
func MergePolicyFactory(name string) (func() spi.MergePolicy, bool) {
	policies.RLock()
	defer policies.RUnlock()
	f, ok := policies.factories[name]
	return f, ok
}

// MergePolicies returns the registered merge policy names, sorted.
func MergePolicies() []string {
	policies.RLock()
	defer policies.RUnlock()
	return slices.Sorted(maps.Keys(policies.factories))
}
