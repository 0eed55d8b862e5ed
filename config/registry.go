package config

import (
	"maps"
	"slices"
	"sync"

	"github.com/partita-go/partita/spi"
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
