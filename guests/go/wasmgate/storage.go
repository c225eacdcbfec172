package wasmgate

import (
	"fmt"

	"wasmgate.example/guests/go/wit/imports/wasmgate_device_log"
	"wasmgate.example/guests/go/wit/imports/wasmgate_device_storage"
)

// StorageGet is the value stored under key; ok is false if there is none.
func StorageGet(key string) (value []byte, ok bool, err error) {
	r := wasmgate_device_storage.Get(key)
	if r.IsErr() {
		return nil, false, errorFromWIT(r.Err())
	}
	if r.Ok().IsNone() {
		return nil, false, nil
	}
	return r.Ok().Some(), true, nil
}

// StorageSet stores value under key; durable when it returns.
func StorageSet(key string, value []byte) error {
	return check(wasmgate_device_storage.Set(key, value))
}

// StorageDelete removes key.
func StorageDelete(key string) error {
	return check(wasmgate_device_storage.Delete(key))
}

// StorageKeys lists the keys that start with prefix, in byte order.
func StorageKeys(prefix string) ([]string, error) {
	r := wasmgate_device_storage.Keys(prefix)
	if r.IsErr() {
		return nil, errorFromWIT(r.Err())
	}
	return r.Ok(), nil
}

// StorageKeysPage lists at most limit (capped at 1,000) keys that start
// with prefix and come after after ("" to start), in byte order. Pass the
// last key of a page as the next after; a shorter page is the end.
func StorageKeysPage(prefix, after string, limit uint32) ([]string, error) {
	r := wasmgate_device_storage.KeysPage(prefix, after, limit)
	if r.IsErr() {
		return nil, errorFromWIT(r.Err())
	}
	return r.Ok(), nil
}

// Level of a log line.
type Level uint8

const (
	Trace Level = iota
	Debug
	InfoLevel
	WarnLevel
	ErrorLevel
)

// Log writes a line to the app's log.
func Log(level Level, message string) {
	wasmgate_device_log.Log(wasmgate_device_log.Level(level), message)
}

// Infof logs a formatted `info` line.
func Infof(format string, args ...any) { Log(InfoLevel, fmt.Sprintf(format, args...)) }

// Warnf logs a formatted `warn` line.
func Warnf(format string, args ...any) { Log(WarnLevel, fmt.Sprintf(format, args...)) }

// Errorf logs a formatted `error` line.
func Errorf(format string, args ...any) { Log(ErrorLevel, fmt.Sprintf(format, args...)) }
