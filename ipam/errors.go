package ipam

import "errors"

// ErrCodeExhausted is the plugin-specific CNI error code (the spec leaves
// 100 and up to plugins) for "no free address in a range set".
// 100 is taken by the podroute plugin's own ErrCodeInterfaceTaken.
const ErrCodeExhausted uint = 101

// ErrCodeNotAvailable is the CNI spec's STATUS code 50: the plugin cannot
// serve ADD requests.
const ErrCodeNotAvailable uint = 50

var (
	// ErrExhausted is wrapped by Allocate when a range set has no free address.
	ErrExhausted = errors.New("no free address")
	// ErrBusy is returned when the network's lock could not be taken in time.
	ErrBusy = errors.New("ipam store is busy: lock not acquired in time")
)

// FieldError is an invalid value in the network configuration; Field is the
// JSON path of the offending value, e.g. "ipam.ranges[0][1].subnet".
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, msg string) *FieldError { return &FieldError{Field: field, Msg: msg} }

// DecodeError is network configuration that is not well-formed JSON or has a
// value of the wrong JSON type. Field is the JSON path as far as it is known.
type DecodeError struct {
	Field string
	Msg   string
	Err   error // the encoding/json error
}

func (e *DecodeError) Error() string { return e.Field + ": " + e.Msg }
func (e *DecodeError) Unwrap() error { return e.Err }
