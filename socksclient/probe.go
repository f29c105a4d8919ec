package socksclient

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/socksgate/socksgate/internal/netctx"
	"github.com/socksgate/socksgate/socks"
)

// probeTarget is what ProbePipelining asks for: 0.0.0.0 port 0 reaches nothing, so a proxy can
// only refuse it, and nothing beyond the proxy is contacted.
var probeTarget = socks.Addr{IP: netip.IPv4Unspecified()}

// ProbePipelining asks the proxy whether it answers a request sent in the same write as the
// greeting, the way Pipeline sends it. The request is a CONNECT to 0.0.0.0:0: any well-formed
// reply to it, a refusal included, means yes. A proxy that answers the greeting and then stays
// silent until ctx ends (microsocks 1.0.3 does), closes, or answers with garbage means no. The
// error is for a proxy that could not be asked (unreachable, greeting refused): ask again later.
// A dialer that cannot pipeline (SOCKS4, or with credentials) gets false and no error.
func (d *Dialer) ProbePipelining(ctx context.Context) (bool, error) {
	if d.Version != SOCKS5 || d.Username != "" {
		return false, nil
	}
	c, err := d.dialProxy(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	buf, _ := socks.AppendGreeting(nil, socks.MethodNoAuth)
	buf, err = socks.AppendRequest(buf, socks.Request{Cmd: socks.CmdConnect, Addr: probeTarget})
	if err != nil {
		return false, err
	}
	greeted := false
	err = netctx.Do(ctx, c, func() error {
		if _, err := c.Write(buf); err != nil {
			return fmt.Errorf("write greeting: %w", err)
		}
		chosen, err := socks.ReadMethodSelection(c)
		if err != nil {
			return protoErr(err)
		}
		if chosen != socks.MethodNoAuth {
			return fmt.Errorf("%w (offered %s, server chose %s)", ErrNoAcceptableMethods, socks.MethodNoAuth, chosen)
		}
		greeted = true
		_, err = socks.ReadReply(c)
		return err
	})
	if !greeted {
		return false, err
	}
	return err == nil, nil
}
