package gateway

import (
	"context"
	"io"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
)

// startExplicit opens the explicit proxy ports (HTTP, SOCKS, mixed) of cfg.Listen.
func (g *Gateway) startExplicit(ctx context.Context, cfg *configs.Config, log *logrus.Logger) ([]io.Closer, error) {
	return nil, nil
}
