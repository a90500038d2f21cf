/* philox.h — the counter-based generator Philox 4x32-10 (Salmon et al., SC'11) and the
 * mapping from (seed, position) to numbers. Written once for the CPU and the GPU: only
 * integer ops and IEEE +, -, *, /, sqrt in double (no libm), so a GPU build compiled
 * without FMA contraction produces the same bits.
 *
 * The stream: number j of a generator with key `seed` comes from block j/4, lane j%4:
 *   x = philox4x32_10(counter = {lo(j/4), hi(j/4), 0, 0}, key = {lo(seed), hi(seed)})[j%4]
 * uniform: (x >> 8) * 2^-24 in [0, 1) (24 bits: exact in f32)
 * normal: Box-Muller on lane pairs (0,1) and (2,3) of a block:
 *   u1 = ((x0 >> 8) + 1) * 2^-24 in (0, 1], u2 = (x1 >> 8) * 2^-24,
 *   lane 0 = sqrt(-2 ln u1) cos(2 pi u2), lane 1 = sqrt(-2 ln u1) sin(2 pi u2).
 * A draw of n numbers at offset o uses j = o .. o+n-1; o is kept a multiple of 4.
 */
#ifndef TENSOR_PHILOX_H
#define TENSOR_PHILOX_H

#include <stdint.h>

#ifdef __CUDACC__
#define PHILOX_FN static inline __host__ __device__
#else
#define PHILOX_FN static inline
#endif

PHILOX_FN void philox4x32_10(const uint32_t ctr_in[4], const uint32_t key_in[2], uint32_t out[4])
{
    uint32_t c0 = ctr_in[0], c1 = ctr_in[1], c2 = ctr_in[2], c3 = ctr_in[3], k0 = key_in[0], k1 = key_in[1];
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

PHILOX_FN void philox_block(uint64_t seed, uint64_t block, uint32_t out[4])
{
    const uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), 0, 0};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    philox4x32_10(ctr, key, out);
}

PHILOX_FN double philox_uniform(uint32_t x) { return (double)(x >> 8) * (1.0 / 16777216.0); }

/* natural log for u in (0, 1], by exponent split and the atanh series */
PHILOX_FN double philox_log(double u)
{
    int e = 0;
    while (u < 0.70710678118654752440) { u *= 2.0; e--; }   /* exact scalings */
    double s = (u - 1.0) / (u + 1.0), s2 = s * s, term = s, sum = 0.0;
    for (int k = 1; k <= 31; k += 2) { sum += term / (double)k; term *= s2; }
    return 2.0 * sum + (double)e * 0.69314718055994530942;
}

/* sin and cos of 2 pi u for u in [0, 1): quadrant by exact arithmetic, Taylor on [0, pi/2) */
PHILOX_FN void philox_sincos2pi(double u, double *s, double *c)
{
    int q = (int)(u * 4.0);
    double r = u - (double)q * 0.25, t = r * 6.28318530717958647692, t2 = t * t;
    double sn = 0.0, cs = 0.0, ts = t, tc = 1.0;
    for (int k = 1; k <= 23; k += 2) {
        sn += ts;
        cs += tc;
        ts *= -t2 / (double)((k + 1) * (k + 2));
        tc *= -t2 / (double)(k * (k + 1));
    }
    switch (q & 3) {
    case 0: *s = sn; *c = cs; break;
    case 1: *s = cs; *c = -sn; break;
    case 2: *s = -sn; *c = -cs; break;
    default: *s = -cs; *c = sn; break;
    }
}

/* the four normals of one block */
PHILOX_FN void philox_normal4(const uint32_t x[4], double z[4])
{
    for (int p = 0; p < 2; p++) {
        double u1 = (double)((x[2 * p] >> 8) + 1) * (1.0 / 16777216.0), u2 = philox_uniform(x[2 * p + 1]);
        double r = __builtin_sqrt(-2.0 * philox_log(u1)), sn, cs;
        philox_sincos2pi(u2, &sn, &cs);
        z[2 * p] = r * cs;
        z[2 * p + 1] = r * sn;
    }
}

#endif
