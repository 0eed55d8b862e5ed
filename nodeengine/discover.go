package nodeengine

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/partita-go/partita/nodeengine/discovery"
)

// multicastWait is how long a member starting with multicast discovery
// listens for others before it starts a new cluster.
const multicastWait = 2 * time.Second

// discover starts multicast discovery for the member's lifetime and returns
// the peers heard within multicastWait. Peers heard later are joined by
// joinDiscovered, so two members that started apart still merge. When
// multicast is unusable the member starts alone, with a warning.
func (n *Node) discover(ctx context.Context) []string {
	mc := n.cfg.Network.Join.Multicast
	iface, err := interfaceOf(n.tr.addr.IP)
	if err != nil {
		n.log.Warn("multicast discovery unavailable; configure network.join.members to join others", "group", mc.Group, "error", err)
		return nil
	}
	d, err := discovery.Start(discovery.Config{
		Group: mc.Group, Cluster: n.cfg.Cluster.Name, Logger: n.log, Interface: iface,
		Self: discovery.Beacon{Cluster: n.cfg.Cluster.Name, Address: n.address, ID: n.view.id},
	})
	if err != nil {
		n.log.Warn("multicast discovery unavailable; configure network.join.members to join others", "group", mc.Group, "error", err)
		return nil
	}
	var seeds []string
	wait, cancel := context.WithTimeout(ctx, multicastWait)
	defer cancel()
	select {
	case b, ok := <-d.Peers():
		if ok {
			seeds = append(seeds, b.Address)
		}
	case <-wait.Done():
	}
	if !n.run.spawn(func() { n.joinDiscovered(d) }) {
		d.Close()
	}
	return seeds
}

// joinDiscovered hands the members heard by multicast that are not in
// the member list to split-brain healing, until the node stops: they may
// belong to another cluster of this name, which must merge with this one
// (the smaller into the larger, with its data), not be joined as if
// neither held any.
func (n *Node) joinDiscovered(d *discovery.Discoverer) {
	defer d.Close()
	for {
		select {
		case <-n.run.stop():
			return
		case b, ok := <-d.Peers():
			if !ok {
				return
			}
			if n.view.hasMember(b.ID) {
				continue
			}
			n.sb.heard(b.Address)
		}
	}
}

// interfaceOf returns the network interface that holds ip, so that
// discovery beacons go where the member can be reached: a member bound to
// 127.0.0.1 looks for others on the loopback interface only. An
// unspecified ip (listen everywhere) leaves the choice to the routing table.
func interfaceOf(ip net.IP) (*net.Interface, error) {
	if ip.IsUnspecified() {
		return nil, nil
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for i := range ifaces {
		addrs, err := ifaces[i].Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.Equal(ip) {
				return &ifaces[i], nil
			}
		}
	}
	return nil, fmt.Errorf("no network interface holds the bind address %s", ip)
}
