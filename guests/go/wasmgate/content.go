package wasmgate

import (
	content "wasmgate.example/guests/go/wit/imports/wasmgate_device_content"
)

// Direction of a content transfer.
type Direction uint8

const (
	Upload Direction = iota
	Download
)

// TransferState of a content transfer.
type TransferState uint8

const (
	// TransferRunning: being transferred (or waiting for the link).
	TransferRunning TransferState = iota
	// TransferDone: uploaded and confirmed, or downloaded and checked (in
	// the app's directory as downloads/{name}).
	TransferDone
	// TransferFailed: refused or corrupt; Transfer.Reason says why.
	TransferFailed
)

// A Transfer of content to or from the cloud.
type Transfer struct {
	ID          string
	Name        string
	Direction   Direction
	Size        uint64 // bytes in all
	Transferred uint64 // bytes confirmed so far
	State       TransferState
	Reason      string // why it failed (TransferFailed only)
}

// UploadFile uploads a file of the app's own directory (path relative to
// it) as name; the host takes a copy at once. It returns the transfer's id.
func UploadFile(name, path string) (string, error) {
	r := content.UploadFile(name, path)
	if r.IsErr() {
		return "", errorFromWIT(r.Err())
	}
	return r.Ok(), nil
}

// UploadBytes uploads data as name, as UploadFile does.
func UploadBytes(name string, data []byte) (string, error) {
	r := content.UploadBytes(name, data)
	if r.IsErr() {
		return "", errorFromWIT(r.Err())
	}
	return r.Ok(), nil
}

// Transfers are the app's transfers, newest first (at most the last 100).
func Transfers() []Transfer {
	list := content.Transfers()
	out := make([]Transfer, len(list))
	for i, t := range list {
		out[i] = Transfer{
			ID:          t.Id,
			Name:        t.Name,
			Direction:   Direction(t.Direction),
			Size:        t.Size,
			Transferred: t.Transferred,
			State:       TransferState(t.State.Tag()),
		}
		if t.State.Tag() == content.State_Failed {
			out[i].Reason = t.State.Failed()
		}
	}
	return out
}
