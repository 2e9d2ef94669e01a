package main

import (
	"math"
	"strconv"
	"strings"

	"github.com/cockroachdb/errors"
)

// byteSize is a flag.Value of a size in bytes: a plain integer, or one with
// an IEC suffix (B, KiB, MiB, GiB; any case), such as 512KiB. A negative
// value keeps its sign ("no limit" for the flags that take one).
type byteSize int

var byteUnits = []struct {
	suffix string
	n      int
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

func (b *byteSize) Set(s string) error {
	n, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

// String prints the size in the largest unit that divides it exactly, so
// that the help shows 1MiB rather than 1048576.
func (b *byteSize) String() string {
	n := int(*b)
	for _, u := range byteUnits[:3] {
		if n != 0 && n%u.n == 0 {
			return strconv.Itoa(n/u.n) + u.suffix
		}
	}
	return strconv.Itoa(n)
}

// parseByteSize parses a byteSize.
func parseByteSize(s string) (int, error) {
	num, mult := strings.TrimSpace(s), 1
	for _, u := range byteUnits {
		if len(num) > len(u.suffix) && strings.EqualFold(num[len(num)-len(u.suffix):], u.suffix) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt || n < math.MinInt {
		return 0, errors.Newf("size %q: want a number of bytes, or one with KiB, MiB or GiB (such as 512KiB)", s)
	}
	if n > int64(math.MaxInt/mult) || n < int64(math.MinInt/mult) {
		return 0, errors.Newf("size %q is too large", s)
	}
	return int(n) * mult, nil
}
