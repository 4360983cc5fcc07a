#include "shoal_core.h"
#include "atomic_internal.h"

uint64_t shoal_load64(const uint64_t *addr) { return ld64(addr); }
void shoal_store64(uint64_t *addr, uint64_t value) { st64(addr, value); }
uint64_t shoal_fetch_add64(uint64_t *addr, uint64_t delta) { return __atomic_fetch_add(addr, delta, SC); }
int shoal_cas64(uint64_t *addr, uint64_t *expected, uint64_t desired) { return cas64(addr, expected, desired); }
uint32_t shoal_load32(const uint32_t *addr) { return ld32(addr); }
