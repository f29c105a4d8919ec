package gateway

import (
	"context"
	"io"

	"github.com/sirupsen/logrus"

	"github.com/socksgate/socksgate/configs"
)

// startUDP opens the transparent UDP (TPROXY) listener when cfg.Transparent.UDP is on.
func (g *Gateway) startUDP(ctx context.Context, cfg *configs.Config, log *logrus.Logger) ([]io.Closer, error) {
	return nil, nil
}
