// A test guest in Go, after guests/rust/test-guests/content-transfer but
// without files (the Zig build has no WASI filesystem, and the two should
// match): on its first start it uploads `upload_kib` KiB of deterministic
// bytes as `data.bin` with wasmgate.UploadBytes; on every tick it logs each
// transfer whose progress changed (wasmgate.Transfers). The action
// `upload-bytes(text)` uploads the text as `note.txt` and returns the
// transfer's id.
package main

import (
	"fmt"

	wg "wasmgate.example/guests/go/wasmgate"
)

func init() { wg.Register(newContentTransfer) }

// main is not called: the gateway calls the exports.
func main() {}

type contentTransfer struct {
	// The last line logged for each transfer, by id.
	seen map[string]string
}

// data is len bytes of xorshift64, the Rust guest's data.bin.
func data(len uint64) []byte {
	seed := uint64(0x9e3779b97f4a7c15)
	out := make([]byte, len)
	for i := range out {
		seed ^= seed << 13
		seed ^= seed >> 7
		seed ^= seed << 17
		out[i] = byte(seed)
	}
	return out
}

func newContentTransfer(config wg.Config, previous []byte) (wg.App, error) {
	kib, err := config.Uint64("upload_kib", 0)
	if err != nil {
		return nil, err
	}
	_, uploaded, err := wg.StorageGet("uploaded")
	if err != nil {
		return nil, fmt.Errorf("%s", err.(*wg.Error).Message)
	}
	if kib > 0 && !uploaded {
		id, err := wg.UploadBytes("data.bin", data(kib<<10))
		if err != nil {
			return nil, fmt.Errorf("upload refused: %v", err)
		}
		if err := wg.StorageSet("uploaded", []byte(id)); err != nil {
			return nil, fmt.Errorf("%s", err.(*wg.Error).Message)
		}
		wg.Infof("upload of data.bin queued as %s", id)
	}
	return &contentTransfer{seen: map[string]string{}}, nil
}

func (c *contentTransfer) Save() []byte { return nil }

func (c *contentTransfer) OnTick(now uint64) {
	for _, t := range wg.Transfers() {
		way := "upload"
		if t.Direction == wg.Download {
			way = "download"
		}
		state := "running"
		switch t.State {
		case wg.TransferDone:
			state = "done"
		case wg.TransferFailed:
			state = "failed: " + t.Reason
		}
		line := fmt.Sprintf("%s %s %s %d/%d %s", way, t.ID, t.Name, t.Transferred, t.Size, state)
		if c.seen[t.ID] == line {
			continue
		}
		wg.Infof("transfer %s", line)
		c.seen[t.ID] = line
	}
}

func (c *contentTransfer) OnDesired(device string, changes wg.Fields) error {
	return fmt.Errorf("nothing to set")
}

func (c *contentTransfer) OnAction(device, name string, argument wg.Value) (wg.Value, error) {
	text, ok := argument.(wg.Text)
	if name != "upload-bytes" || !ok {
		return nil, fmt.Errorf("unknown action %s", name)
	}
	id, err := wg.UploadBytes("note.txt", []byte(text))
	if err != nil {
		return nil, err
	}
	return wg.Text(id), nil
}
