/* SHA-256 (FIPS 180-4) for tiny guests. */
#ifndef PYVMM_TINY_SHA256_H
#define PYVMM_TINY_SHA256_H
#include <stdint.h>
#include <stddef.h>
struct sha256 { uint32_t h[8]; uint8_t block[64]; uint64_t length; size_t used; };
void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const uint8_t *data, size_t len);
void sha256_final(struct sha256 *c, uint8_t out[32]);
#endif
