package admin

import (
	"context"
	"net/http"
	"time"
)

// Device is one LAN device as GET /devices reports it.
type Device struct {
	MAC       string    `json:"mac"`
	Name      string    `json:"name"`
	NameFrom  string    `json:"name_from"` // dhcp, dns, or "" with no name
	Addresses []string  `json:"addresses"`
	Flows     int       `json:"flows"` // live flows now
	LastSeen  time.Time `json:"last_seen"`
	Today     Traffic   `json:"today"` // since local midnight
	Month     Traffic   `json:"month"` // since the first of the month, local time
	Total     Traffic   `json:"total"`
}

// DeviceBytes is one series of socksgate_device_bytes_total.
type DeviceBytes struct {
	Device string // a name, a MAC, or "other"
	Total  Traffic
}

// DeviceSource is implemented by a Source that knows the LAN's devices: then /devices lists
// them and /metrics has socksgate_device_bytes_total.
type DeviceSource interface {
	Devices() []Device
	// DeviceBytes are the all-time totals with bounded cardinality: a few devices, the rest
	// summed as "other".
	DeviceBytes() []DeviceBytes
}

const helpDevBytes = "Bytes moved by LAN devices since first seen, by device (its name, else its MAC; beyond the top few, \"other\") and direction (up: from the device)."

func devicesHandler(ds DeviceSource) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		devs := ds.Devices()
		if devs == nil {
			devs = []Device{}
		}
		for i := range devs {
			if devs[i].Addresses == nil {
				devs[i].Addresses = []string{}
			}
		}
		writeJSON(w, struct {
			Devices []Device `json:"devices"`
		}{devs})
	}
}

// deviceSeries adds socksgate_device_bytes_total when src knows devices.
func deviceSeries(e *expo, src Source) {
	ds, ok := src.(DeviceSource)
	if !ok {
		return
	}
	for _, d := range ds.DeviceBytes() {
		e.counter("socksgate_device_bytes_total", helpDevBytes, float64(d.Total.Up), "device", d.Device, "direction", "up")
		e.counter("socksgate_device_bytes_total", helpDevBytes, float64(d.Total.Down), "device", d.Device, "direction", "down")
	}
}

// Devices fetches /devices.
func (c Client) Devices(ctx context.Context) ([]Device, error) {
	var v struct {
		Devices []Device `json:"devices"`
	}
	return v.Devices, c.get(ctx, "/devices", &v)
}
