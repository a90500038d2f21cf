/* half.h — f16 and bf16 conversions on raw bits, written once for the CPU and the GPU so a
 * conversion gives the same bits on both devices (NaN payloads, subnormals, round to nearest
 * even). */
#ifndef TENSOR_HALF_H
#define TENSOR_HALF_H

#include <stdint.h>

#ifdef __CUDACC__
#define HALF_FN static inline __host__ __device__
#else
#define HALF_FN static inline
#endif

HALF_FN uint32_t half_bf16_to_f32_bits(uint16_t h) { return (uint32_t)h << 16; }

HALF_FN uint16_t half_f32_bits_to_bf16(uint32_t u)
{
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);   /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);   /* round to nearest even */
    return (uint16_t)(u >> 16);
}

HALF_FN uint32_t half_f16_to_f32_bits(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        if (man == 0) return sign;
        int e = -1;   /* subnormal: normalise */
        do { man <<= 1; e++; } while (!(man & 0x400));
        return sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
    if (exp == 31) return sign | 0x7f800000u | (man << 13);
    return sign | ((exp + 127 - 15) << 23) | (man << 13);
}

HALF_FN uint16_t half_f32_bits_to_f16(uint32_t u)
{
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - exp;
        uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1);
        uint32_t r = man >> shift;
        if (rest > half || (rest == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)exp << 10) | (man >> 13), rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (r & 1))) r++;   /* may carry into the exponent: correct */
    return (uint16_t)(sign | r);
}

#endif
