// Package netctx runs a blocking exchange on a connection under a context, the way the
// x/net/internal/socks dialer does: the context's deadline becomes the connection's, and
// cancelling the context unblocks the exchange. Both upstream dialers (SOCKS and HTTP CONNECT)
// share it.
package netctx

import (
	"context"
	"fmt"
	"net"
	"time"
)

// aLongTimeAgo is a deadline in the past, set to unblock an exchange when its context ends.
var aLongTimeAgo = time.Unix(1, 0)

// Do runs exchange on c under ctx: the context's deadline becomes the connection's, and
// cancelling the context sets a deadline in the past. The deadline is cleared afterwards. When
// the context ended, its error replaces the exchange's.
func Do(ctx context.Context, c net.Conn, exchange func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return fmt.Errorf("set deadline: %w", err)
		}
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	err := exchange()
	if !stop() {
		// The context ended during the exchange; the AfterFunc ran or is running, so the
		// connection may carry a past deadline at any moment: it is unusable.
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
			// The connection saw the context's deadline before the context's own timer did.
			return context.DeadlineExceeded
		}
		return err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear deadline: %w", err)
	}
	return nil
}
