package wasmgate

import (
	witTypes "go.bytecodealliance.org/pkg/wit/types"
	"wasmgate.example/guests/go/wit/imports/wasmgate_device_device"
	types "wasmgate.example/guests/go/wit/imports/wasmgate_device_types"
)

// Severity of an alert.
type Severity uint8

const (
	Info Severity = iota
	Warning
	Critical
)

// Device is a device this app speaks for. The generated handle drops the
// host's resource when the Device is garbage collected.
type Device struct {
	d *wasmgate_device_device.Device
}

// ThisDevice is the device the app speaks for by default. Keep it: the
// host caps how many handles are live at once.
func ThisDevice() *Device {
	return &Device{wasmgate_device_device.ThisDevice()}
}

// RegisterDevice registers a device the app speaks for beside its own, by
// its hardware id; model names one of the app's `[app.models]` and metadata
// (manufacturer, serial number, ...) is announced to the cloud with it. The
// same hardware id always gives the same device.
func RegisterDevice(hardwareID, model string, metadata [][2]string) (*Device, error) {
	pairs := make([]witTypes.Tuple2[string, string], len(metadata))
	for i, kv := range metadata {
		pairs[i] = witTypes.Tuple2[string, string]{F0: kv[0], F1: kv[1]}
	}
	r := wasmgate_device_device.Register(hardwareID, model, pairs)
	if r.IsErr() {
		return nil, errorFromWIT(r.Err())
	}
	return &Device{r.Ok()}, nil
}

// UnregisterDevice stops speaking for a registered device: handles to it
// refuse every call afterwards.
func UnregisterDevice(hardwareID string) error {
	return check(wasmgate_device_device.Unregister(hardwareID))
}

// Close drops the handle now rather than when it is garbage collected.
func (d *Device) Close() { d.d.Drop() }

// ID is the device id.
func (d *Device) ID() string { return d.d.Id() }

// Report the current value of attributes (all or nothing).
func (d *Device) Report(attributes ...Field) error {
	return check(d.d.Report(fieldsToWIT(attributes)))
}

// DeviceReport is one device's attributes, for ReportAll.
type DeviceReport struct {
	Device     *Device
	Attributes []Field
}

// ReportAll reports several devices in one call (a whole bus scan): the
// gateway stores them in one step, all or nothing, and the error names the
// device it refused. At most 1,000 reports a call.
func ReportAll(reports []DeviceReport) error {
	out := make([]witTypes.Tuple2[*wasmgate_device_device.Device, types.Fields], len(reports))
	for i, r := range reports {
		out[i] = witTypes.Tuple2[*wasmgate_device_device.Device, types.Fields]{F0: r.Device.d, F1: fieldsToWIT(r.Attributes)}
	}
	return check(wasmgate_device_device.ReportAll(out))
}

// Reported is the last value reported for an attribute.
func (d *Device) Reported(name string) (Value, bool) {
	return optionFromWIT(d.d.Reported(name))
}

// Desired is the desired value of a writable attribute.
func (d *Device) Desired(name string) (Value, bool) {
	return optionFromWIT(d.d.Desired(name))
}

// Time is a point's time in a unit of the data source; nil means "now".
type Time struct {
	Unit  TimeUnit
	Value uint64
}

// TimeUnit of a Time.
type TimeUnit uint8

const (
	Seconds TimeUnit = iota
	Milliseconds
	Microseconds
	Nanoseconds
)

func timeToWIT(at *Time) witTypes.Option[types.Time] {
	if at == nil {
		return witTypes.None[types.Time]()
	}
	switch at.Unit {
	case Seconds:
		return witTypes.Some(types.MakeTimeSeconds(at.Value))
	case Milliseconds:
		return witTypes.Some(types.MakeTimeMilliseconds(at.Value))
	case Microseconds:
		return witTypes.Some(types.MakeTimeMicroseconds(at.Value))
	}
	return witTypes.Some(types.MakeTimeNanoseconds(at.Value))
}

// Record one point of a time-series; at == nil means now.
func (d *Device) Record(series string, at *Time, values ...Field) error {
	return check(d.d.Record(series, timeToWIT(at), fieldsToWIT(values)))
}

// A Point of a time-series.
type Point struct {
	At     *Time
	Values Fields
}

// RecordBatch records several points of one series (all or nothing).
func (d *Device) RecordBatch(series string, points []Point) error {
	out := make([]types.Point, len(points))
	for i, p := range points {
		out[i] = types.Point{At: timeToWIT(p.At), Values: fieldsToWIT(p.Values)}
	}
	return check(d.d.RecordBatch(series, out))
}

// Alert raises an alert declared in the model.
func (d *Device) Alert(name string, severity Severity, values ...Field) error {
	return check(d.d.Alert(name, types.Severity(severity), fieldsToWIT(values)))
}
