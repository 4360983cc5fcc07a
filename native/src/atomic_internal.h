/* Internal helpers shared by the native sources: GCC/Clang __atomic builtins on plain
 * integers, which is what memory mapped by several processes needs (C11 _Atomic
 * objects may not be lock-free across processes in general; these are). */
#ifndef SHOAL_ATOMIC_INTERNAL_H
#define SHOAL_ATOMIC_INTERNAL_H
#include <stdint.h>

#include "shoal_core.h"

#define SC __ATOMIC_SEQ_CST
static inline uint32_t ld32(const uint32_t *p) { return __atomic_load_n(p, SC); }
static inline void st32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, SC); }
static inline uint32_t add32(uint32_t *p, uint32_t d) { return __atomic_fetch_add(p, d, SC); }
static inline uint32_t sub32(uint32_t *p, uint32_t d) { return __atomic_fetch_sub(p, d, SC); }
static inline int cas32(uint32_t *p, uint32_t *e, uint32_t d) {
    return __atomic_compare_exchange_n(p, e, d, 0, SC, SC);
}
static inline uint64_t ld64(const uint64_t *p) { return __atomic_load_n(p, SC); }
static inline void st64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, SC); }
static inline int cas64(uint64_t *p, uint64_t *e, uint64_t d) {
    return __atomic_compare_exchange_n(p, e, d, 0, SC, SC);
}
static inline void cpu_relax(void) { shoal_cpu_relax(); }
#endif
