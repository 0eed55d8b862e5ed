package spi

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Property is one entry of a service's `properties:` map.
type Property struct {
	// Value is the property's scalar text as written in the file.
	Value string
	// Where is "file:line" of the value, for error messages.
	Where string
}

// Properties are a service's `properties:` from the config file. The typed
// getters return the default when the key is absent and an error naming
// the key, its position and the bad value when it does not parse. The zero
// value is an empty set of properties.
type Properties struct {
	service string
	m       map[string]Property
}

// NewProperties builds the properties of service from m.
func NewProperties(service string, m map[string]Property) Properties {
	return Properties{service: service, m: m}
}

// Keys returns the property names, sorted.
func (p Properties) Keys() []string {
	keys := make([]string, 0, len(p.m))
	for k := range p.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Lookup returns the raw property and whether it is set.
func (p Properties) Lookup(key string) (Property, bool) {
	v, ok := p.m[key]
	return v, ok
}

// String returns the property as a string, or def when it is absent.
func (p Properties) String(key, def string) string {
	if v, ok := p.m[key]; ok {
		return v.Value
	}
	return def
}

// Int returns the property as an int, or def when it is absent.
func (p Properties) Int(key string, def int) (int, error) {
	v, ok := p.m[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v.Value)
	if err != nil {
		return def, p.bad(key, v, "an integer")
	}
	return n, nil
}

// Bool returns the property as a bool (true/false), or def when absent.
func (p Properties) Bool(key string, def bool) (bool, error) {
	v, ok := p.m[key]
	if !ok {
		return def, nil
	}
	b, err := strconv.ParseBool(v.Value)
	if err != nil {
		return def, p.bad(key, v, "true or false")
	}
	return b, nil
}

// Duration returns the property as a time.Duration ("250ms", "3s"), or def
// when it is absent.
func (p Properties) Duration(key string, def time.Duration) (time.Duration, error) {
	v, ok := p.m[key]
	if !ok {
		return def, nil
	}
	d, err := time.ParseDuration(v.Value)
	if err != nil {
		return def, p.bad(key, v, "a duration such as 250ms or 3s")
	}
	return d, nil
}

// OneOf returns the property, which must be one of allowed (compared
// without case), or def when it is absent.
func (p Properties) OneOf(key, def string, allowed ...string) (string, error) {
	v, ok := p.m[key]
	if !ok {
		return def, nil
	}
	for _, a := range allowed {
		if strings.EqualFold(v.Value, a) {
			return a, nil
		}
	}
	return def, p.bad(key, v, "one of "+strings.Join(allowed, ", "))
}

func (p Properties) bad(key string, v Property, want string) error {
	where := v.Where
	if where != "" {
		where += ": "
	}
	return fmt.Errorf("%sservice %q: property %q: want %s, got %q", where, p.service, key, want, v.Value)
}

// With returns a copy of p with key set to value (for configs built in
// code, and tests).
func (p Properties) With(key, value string) Properties {
	m := make(map[string]Property, len(p.m)+1)
	for k, v := range p.m {
		m[k] = v
	}
	m[key] = Property{Value: value, Where: "(set in code)"}
	return Properties{service: p.service, m: m}
}
