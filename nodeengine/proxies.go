package nodeengine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/partita-go/partita/spi"
)

// proxyRegistry caches one proxy per (service, name) on this member and
// keeps every member's set of objects the same.
type proxyRegistry struct {
	n    *Node
	mu   sync.Mutex
	objs map[string]map[string]spi.DistributedObject
}

var _ spi.ProxyRegistry = (*proxyRegistry)(nil)

func (p *proxyRegistry) remote(service string) (spi.RemoteService, error) {
	s, ok := p.n.services[service]
	if !ok {
		return nil, fmt.Errorf("%w: %q is not enabled on member %s", spi.ErrUnknownService, service, p.n.address)
	}
	rs, ok := s.(spi.RemoteService)
	if !ok {
		return nil, fmt.Errorf("service %q is not a RemoteService: it has no distributed objects", service)
	}
	return rs, nil
}

// createLocal returns the proxy, creating it on this member if needed;
// created is true when this call created it.
func (p *proxyRegistry) createLocal(service, name string) (obj spi.DistributedObject, created bool, err error) {
	rs, err := p.remote(service)
	if err != nil {
		return nil, false, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if obj := p.objs[service][name]; obj != nil {
		return obj, false, nil
	}
	obj, err = rs.CreateDistributedObject(name)
	if err != nil {
		return nil, false, fmt.Errorf("%s: create %q: %w", service, name, err)
	}
	if p.objs[service] == nil {
		p.objs[service] = make(map[string]spi.DistributedObject)
	}
	p.objs[service][name] = obj
	return obj, true, nil
}

func (p *proxyRegistry) destroyLocal(service, name string) error {
	rs, err := p.remote(service)
	if err != nil {
		return err
	}
	p.mu.Lock()
	delete(p.objs[service], name)
	p.mu.Unlock()
	rs.DestroyDistributedObject(name)
	return nil
}

// Get implements spi.ProxyRegistry.
func (p *proxyRegistry) Get(ctx context.Context, service, name string) (spi.DistributedObject, error) {
	obj, created, err := p.createLocal(service, name)
	if err != nil || !created {
		return obj, err
	}
	return obj, p.broadcast(ctx, &proxyOp{service: service, name: name})
}

// Destroy implements spi.ProxyRegistry.
func (p *proxyRegistry) Destroy(ctx context.Context, service, name string) error {
	if err := p.destroyLocal(service, name); err != nil {
		return err
	}
	return p.broadcast(ctx, &proxyOp{destroy: true, service: service, name: name})
}

// Names implements spi.ProxyRegistry.
func (p *proxyRegistry) Names(service string) []string {
	p.mu.Lock()
	names := make([]string, 0, len(p.objs[service]))
	for name := range p.objs[service] {
		names = append(names, name)
	}
	p.mu.Unlock()
	sort.Strings(names)
	return names
}

// all lists every (service, name) pair.
func (p *proxyRegistry) all() [][2]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out [][2]string
	for s, m := range p.objs {
		for name := range m {
			out = append(out, [2]string{s, name})
		}
	}
	return out
}

// broadcast runs op on every other member and waits for all of them. A
// member that leaves meanwhile is skipped: it has nothing to keep in step.
func (p *proxyRegistry) broadcast(ctx context.Context, op *proxyOp) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, m := range p.n.Members() {
		if m.ID == p.n.view.id {
			continue
		}
		wg.Add(1)
		go func(m spi.Member) {
			defer wg.Done()
			op := *op
			_, err := p.n.ops.InvokeOnMember(ctx, engineService, &op, m.ID)
			if err != nil && !errors.Is(err, spi.ErrNoSuchMember) && !errors.Is(err, spi.ErrMemberLeft) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("member %s: %w", m.Address, err))
				mu.Unlock()
			}
		}(m)
	}
	wg.Wait()
	return errors.Join(errs...)
}

// syncFrom creates locally every object that member id knows (a member
// that just joined learns the objects created before it came).
func (p *proxyRegistry) syncFrom(ctx context.Context, id string) {
	resp, err := p.n.ops.InvokeOnMember(ctx, engineService, &listProxiesOp{}, id)
	if err != nil {
		p.n.log.Warn("cannot fetch distributed objects from the master", "master", id, "error", err)
		return
	}
	b, _ := resp.([]byte)
	r := spi.NewReader(b)
	for r.Remaining() > 0 && r.Err() == nil {
		service, name := r.ReadString(), r.ReadString()
		if r.Err() != nil {
			break
		}
		if _, _, err := p.createLocal(service, name); err != nil {
			p.n.log.Warn("cannot create distributed object known to the cluster", "service", service, "name", name, "error", err)
		}
	}
	if err := r.Err(); err != nil {
		p.n.log.Warn("bad object list from the master", "master", id, "error", err)
	}
}
