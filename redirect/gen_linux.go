package redirect

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The periodic check lists socksgate's table only when the nftables ruleset has changed since
// the last look. The kernel numbers every committed batch (the ruleset generation,
// NFT_MSG_GETGEN), whoever sent it, socksgate's own socket included: an unchanged generation
// means no table, chain, rule, set or element anywhere has changed, so there is nothing to
// compare. Listing the table instead costs what its sets hold: with a country's 8,000 direct
// prefixes, about 0.3 s of CPU a minute on the lab's machine (the kernel restarts its walk of
// an interval set at every dump message), ten times that on a router's CPU. google/nftables
// v0.3.0 has no call for the generation; the message is the nfgenmsg header alone, and the
// reply's NFTA_GEN_ID a big-endian u32.

var msgGetGen = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN)

// nftGeneration returns the nftables ruleset generation of the namespace behind netns (0: the
// caller's).
func nftGeneration(netns int) (uint32, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return 0, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	defer c.Close()
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: msgGetGen, Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("nftables generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("nftables generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, fmt.Errorf("nftables generation: no NFTA_GEN_ID in the reply")
}
