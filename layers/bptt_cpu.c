/* The BPTT adjoint recursions of layers/dynamics.py (lif_adjoint, ta_lif_adjoint) fused into one
 * pass over memory, for CPU tensors. layers/bptt_cpu.py compiles this file with the system's C
 * compiler and calls it through ctypes (see there for why and when).
 *
 * Per neuron element (numel = B * prod(shape) of them per time step), backwards in time:
 *   A_t  = A_{t+1} + (G_t - A_{t+1}) / tau_s          (A_{T-1} = G_{T-1} / tau_s)
 *   x_t  = u_t - theta_t,   g_t = surrogate(x_t, k),   keep_t = [x_t <= 0]   (= 1 - s_t)
 *   U_t  = g_t A_t + leak (keep_t - g_t u_t) U_{t+1}  (+ theta_v Th_t for TA-LIF)
 *   Th_t = Th_{t+1} - (g_t A_t - leak g_t u_t U_{t+1}),   dtheta_v += Th_t (u_t - NDS_t)
 * Elements go in blocks whose running state (A, U, Th) stays in L1; the loop over a block's
 * elements has no branch (one copy per surrogate, per neuron type, per first/later step), so the
 * compiler vectorises it.
 */
#include <math.h>

#define BLOCK 256
#define HALF_PI 1.57079632679489661923

/* The surrogates of layers/surrogate.py: g = d spike / dx at x = u - theta, sharpness k. */
#define G_PUBLISHED(REAL, EXP, FABS, x, k) ({ /* f = sigmoid(clamp(-x k, -8, 8)), k f (1 - f) */ \
    REAL z_ = -(x) * (k); z_ = z_ < -8 ? -8 : (z_ > 8 ? 8 : z_);                                 \
    REAL f_ = 1 / (1 + EXP(-z_)); (k) * f_ * (1 - f_); })
#define G_SIGMOID(REAL, EXP, FABS, x, k) ({                                                       \
    REAL s_ = 1 / (1 + EXP(-(k) * (x))); (k) * s_ * (1 - s_); })
#define G_FAST_SIGMOID(REAL, EXP, FABS, x, k) ({                                                  \
    REAL d_ = 1 + (k) * FABS(x); ((k) / 2) / (d_ * d_); })
#define G_ARCTAN(REAL, EXP, FABS, x, k) ({                                                        \
    REAL y_ = (REAL)HALF_PI * (k) * (x); ((k) / 2) / (1 + y_ * y_); })
#define G_TRIANGLE(REAL, EXP, FABS, x, k) ({                                                      \
    REAL y_ = 1 - (k) * FABS(x); y_ > 0 ? (k) * y_ : (REAL)0; })
#define G_RECTANGLE(REAL, EXP, FABS, x, k) (FABS(x) < 1 / (2 * (k)) ? (k) : (REAL)0)

/* One block of n elements starting at element `start`, all time steps. */
#define DEFINE_BLOCKS(NAME, REAL, EXP, FABS, KIND)                                                 \
static void NAME##_lif_##KIND(const REAL *grad_traces, const REAL *membrane, REAL v_th,           \
                              long n_steps, long numel, long start, long n, REAL leak, REAL rate,  \
                              REAL k, REAL *out)                                                   \
{                                                                                                  \
    REAL a[BLOCK], later[BLOCK];                                                                   \
    for (long t = n_steps - 1; t >= 0; --t) {                                                      \
        const long row = t * numel + start;                                                        \
        const REAL *G = grad_traces + row, *u = membrane + row;                                    \
        REAL *U = out + row;                                                                       \
        if (t == n_steps - 1) {                                                                    \
            for (long i = 0; i < n; ++i) {                                                         \
                const REAL A = G[i] * rate, x = u[i] - v_th;                                       \
                const REAL value = G_##KIND(REAL, EXP, FABS, x, k) * A;                            \
                a[i] = A; later[i] = value; U[i] = value;                                          \
            }                                                                                      \
        } else {                                                                                   \
            for (long i = 0; i < n; ++i) {                                                         \
                const REAL A = a[i] + rate * (G[i] - a[i]), x = u[i] - v_th;                       \
                const REAL g = G_##KIND(REAL, EXP, FABS, x, k);                                    \
                const REAL keep = x <= 0 ? 1 : 0;                                                  \
                const REAL value = g * A + leak * (keep - g * u[i]) * later[i];                    \
                a[i] = A; later[i] = value; U[i] = value;                                          \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
static void NAME##_ta_lif_##KIND(const REAL *grad_traces, const REAL *membrane,                   \
                                 const REAL *thresholds, const REAL *theta_v, const REAL *nds,     \
                                 long neurons, long n_steps, long numel, long start, long n,       \
                                 REAL leak, REAL rate, REAL k, REAL *out, REAL *grad_theta_v)      \
{                                                                                                  \
    REAL a[BLOCK], later[BLOCK], th[BLOCK], gtv[BLOCK];                                            \
    const long neuron = start % neurons;                                                           \
    const REAL *tv = theta_v + neuron;                                                             \
    for (long t = n_steps - 1; t >= 0; --t) {                                                      \
        const long row = t * numel + start;                                                        \
        const REAL *G = grad_traces + row, *u = membrane + row, *theta = thresholds + row;         \
        const REAL *nds_t = nds + t * neurons + neuron;                                            \
        REAL *U = out + row;                                                                       \
        if (t == n_steps - 1) {                                                                    \
            for (long i = 0; i < n; ++i) {                                                         \
                const REAL A = G[i] * rate, x = u[i] - theta[i];                                   \
                const REAL gA = G_##KIND(REAL, EXP, FABS, x, k) * A;                               \
                const REAL error = u[i] - nds_t[i];                                                \
                const REAL value = gA - tv[i] * gA;                                                \
                a[i] = A; th[i] = -gA; gtv[i] = -gA * error; later[i] = value; U[i] = value;       \
            }                                                                                      \
        } else {                                                                                   \
            for (long i = 0; i < n; ++i) {                                                         \
                const REAL A = a[i] + rate * (G[i] - a[i]), x = u[i] - theta[i];                   \
                const REAL g = G_##KIND(REAL, EXP, FABS, x, k);                                    \
                const REAL keep = x <= 0 ? 1 : 0;                                                  \
                const REAL error = u[i] - nds_t[i];                                                \
                const REAL gu = g * u[i], gA = g * A;                                              \
                const REAL threshold_grad = th[i] - (gA - leak * gu * later[i]);                   \
                const REAL value = gA + leak * (keep - gu) * later[i] + tv[i] * threshold_grad;   \
                a[i] = A; th[i] = threshold_grad; gtv[i] += threshold_grad * error;                \
                later[i] = value; U[i] = value;                                                    \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    for (long i = 0; i < n; ++i) grad_theta_v[start + i] = gtv[i];                                 \
}

#define DISPATCH(NAME, KIND_ID, KIND, CALL) case KIND_ID: CALL(NAME##_lif_##KIND, NAME##_ta_lif_##KIND); break;

/* grad_traces, membrane, out: [n_steps, numel] (out may be membrane: each u_t is read before its
 * U_t is written); thresholds: [n_steps, numel] for TA-LIF, NULL for LIF (the scalar threshold);
 * theta_v: [neurons], nds: [n_steps, neurons], grad_theta_v: [numel] (per-element sums of
 * Th_t e_t), TA-LIF only. kind: the index of the surrogate in SURROGATE_KINDS (bptt_cpu.py).
 * Works on the elements [begin, end): callers split the range between threads. */
#define DEFINE_ADJOINT(NAME, REAL, EXP, FABS)                                                      \
DEFINE_BLOCKS(NAME, REAL, EXP, FABS, PUBLISHED)                                                    \
DEFINE_BLOCKS(NAME, REAL, EXP, FABS, SIGMOID)                                                      \
DEFINE_BLOCKS(NAME, REAL, EXP, FABS, FAST_SIGMOID)                                                 \
DEFINE_BLOCKS(NAME, REAL, EXP, FABS, ARCTAN)                                                       \
DEFINE_BLOCKS(NAME, REAL, EXP, FABS, TRIANGLE)                                                     \
DEFINE_BLOCKS(NAME, REAL, EXP, FABS, RECTANGLE)                                                    \
int NAME(const REAL *grad_traces, const REAL *membrane, const REAL *thresholds, double threshold, \
         const REAL *theta_v, const REAL *nds, long neurons, long n_steps, long numel, long begin,  \
         long end, double leak, double rate, int kind, double k, REAL *out, REAL *grad_theta_v)   \
{                                                                                                  \
    if (kind < 0 || kind > 5) return -1;                                                           \
    long n;                                                                                        \
    for (long start = begin; start < end; start += n) {                                            \
        n = end - start < BLOCK ? end - start : BLOCK;                                             \
        /* a TA-LIF block stays within one sample: its theta_v and NDS are contiguous */           \
        if (thresholds && n > neurons - start % neurons) n = neurons - start % neurons;            \
        switch (kind) {                                                                            \
        FOR_KINDS(NAME)                                                                            \
        }                                                                                          \
    }                                                                                              \
    return 0;                                                                                      \
}

#define CALL_BLOCK(LIF, TA_LIF)                                                                    \
    if (thresholds)                                                                                \
        TA_LIF(grad_traces, membrane, thresholds, theta_v, nds, neurons, n_steps, numel, start, n, \
               leak, rate, k, out, grad_theta_v);                                                  \
    else                                                                                           \
        LIF(grad_traces, membrane, threshold, n_steps, numel, start, n, leak, rate, k, out)
#define FOR_KINDS(NAME)                                                                            \
    DISPATCH(NAME, 0, PUBLISHED, CALL_BLOCK) DISPATCH(NAME, 1, SIGMOID, CALL_BLOCK)                \
    DISPATCH(NAME, 2, FAST_SIGMOID, CALL_BLOCK) DISPATCH(NAME, 3, ARCTAN, CALL_BLOCK)              \
    DISPATCH(NAME, 4, TRIANGLE, CALL_BLOCK) DISPATCH(NAME, 5, RECTANGLE, CALL_BLOCK)

DEFINE_ADJOINT(bptt_adjoint_f32, float, expf, fabsf)
DEFINE_ADJOINT(bptt_adjoint_f64, double, exp, fabs)
