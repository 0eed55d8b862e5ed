package nodeengine

import (
	"context"
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
	d, err := discovery.Start(discovery.Config{
		Group: mc.Group, Cluster: n.cfg.Cluster.Name, Logger: n.log,
		Self: discovery.Beacon{Cluster: n.cfg.Cluster.Name, Address: n.address, ID: n.id},
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
	n.wg.Add(1)
	go n.joinDiscovered(d)
	return seeds
}

// joinDiscovered joins members heard by multicast that are not yet in the
// member list, until the node stops.
func (n *Node) joinDiscovered(d *discovery.Discoverer) {
	defer n.wg.Done()
	defer d.Close()
	for {
		select {
		case <-n.stop:
			return
		case b, ok := <-d.Peers():
			if !ok {
				return
			}
			if containsMember(*n.members.Load(), b.ID) {
				continue
			}
			if _, err := n.ml.Join([]string{b.Address}); err != nil {
				n.log.Warn("cannot join member found by multicast", "peer", b.Address, "error", err)
			}
		}
	}
}
