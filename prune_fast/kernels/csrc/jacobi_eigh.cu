// One-block parallel Jacobi eigensolver for small symmetric matrices (CUDA C++ twin of the Triton
// kernel in ../small_eigh.py; same algorithm, same pairing, so results agree to rounding).
//
//   A[b] = V diag(w) V^T,   A: batch x k x k row-major float32, k <= PRUNE_FAST_JACOBI_MAX_K
//
// One thread block per matrix, A and V in shared memory (padded to an even size n). Each sweep has
// n-1 rounds; round r pairs i with (2r - i) mod (n-1) (the index paired with itself meets n-1), so
// the n/2 rotations of a round are disjoint and applied together: rows (A <- J^T A), then columns
// (A <- A J, V <- V J). Rotation for p < q (Golub & Van Loan, Alg. 8.5.1):
//   tau = (a_qq - a_pp) / (2 a_pq), t = sign(tau) / (|tau| + sqrt(1 + tau^2)), c = 1/sqrt(1+t^2), s = t c.
// Sweeps stop when ||off(A)||_F <= tol ||A||_F or after max_sweeps. Eigenvalues are written unsorted.
//
// C ABI (loaded with ctypes by prune_fast/kernels/cuda_library.py):
//   int prune_fast_jacobi_eigh_f32(const float* a, float* w, float* v, int batch, int k,
//                                  int max_sweeps, float tol, void* stream);   // returns cudaError_t
#include <cuda_runtime.h>
#include <math.h>

#define PRUNE_FAST_JACOBI_MAX_K 64
#define PRUNE_FAST_JACOBI_THREADS 256

namespace {

__device__ float block_sum(float x, float* scratch) {
  const int tid = threadIdx.x;
  scratch[tid] = x;
  __syncthreads();
  for (int stride = PRUNE_FAST_JACOBI_THREADS / 2; stride > 0; stride >>= 1) {
    if (tid < stride) scratch[tid] += scratch[tid + stride];
    __syncthreads();
  }
  const float total = scratch[0];
  __syncthreads();
  return total;
}

__global__ void __launch_bounds__(PRUNE_FAST_JACOBI_THREADS)
jacobi_eigh_kernel(const float* __restrict__ a, float* __restrict__ w, float* __restrict__ v,
                   int k, int max_sweeps, float tol) {
  constexpr int MAXK = PRUNE_FAST_JACOBI_MAX_K;
  __shared__ float A[MAXK][MAXK + 1];
  __shared__ float V[MAXK][MAXK + 1];
  __shared__ float cs[MAXK];
  __shared__ float sn[MAXK];
  __shared__ int partner[MAXK];
  __shared__ float scratch[PRUNE_FAST_JACOBI_THREADS];

  const int tid = threadIdx.x;
  const int nt = blockDim.x;
  const int n = k + (k & 1);
  const size_t base = static_cast<size_t>(blockIdx.x) * k * k;
  const float* ab = a + base;

  float part = 0.f;
  for (int e = tid; e < n * n; e += nt) {
    const int i = e / n, j = e % n;
    const float x = (i < k && j < k) ? 0.5f * (ab[i * k + j] + ab[j * k + i]) : 0.f;
    A[i][j] = x;
    V[i][j] = (i == j) ? 1.f : 0.f;
    part += x * x;
  }
  const float fro2 = block_sum(part, scratch);
  const int last = n - 1;

  for (int sweep = 0; sweep < max_sweeps && last > 0; ++sweep) {
    part = 0.f;
    for (int e = tid; e < n * n; e += nt) {
      const int i = e / n, j = e % n;
      if (i != j) part += A[i][j] * A[i][j];
    }
    const float off2 = block_sum(part, scratch);
    if (!(off2 > tol * tol * fro2)) break;  // uniform across the block: every thread read scratch[0]

    for (int r = 0; r < last; ++r) {
      if (tid < n) {
        int p = (tid == last) ? r : (2 * r - tid + 2 * last) % last;
        if (tid != last && p == tid) p = last;
        partner[tid] = p;
        float c = 1.f, s = 0.f;
        if (tid < p) {
          const float apq = A[tid][p];
          if (apq != 0.f) {
            const float tau = (A[p][p] - A[tid][tid]) / (2.f * apq);
            const float t = (tau >= 0.f ? 1.f : -1.f) / (fabsf(tau) + sqrtf(1.f + tau * tau));
            c = rsqrtf(1.f + t * t);
            s = t * c;
          }
        }
        cs[tid] = c;
        sn[tid] = s;
      }
      __syncthreads();
      for (int e = tid; e < n * n; e += nt) {  // rows: A <- J^T A
        const int i = e / n, j = e % n, q = partner[i];
        if (i < q) {
          const float x = A[i][j], y = A[q][j];
          A[i][j] = cs[i] * x - sn[i] * y;
          A[q][j] = sn[i] * x + cs[i] * y;
        }
      }
      __syncthreads();
      for (int e = tid; e < n * n; e += nt) {  // columns: A <- A J, V <- V J
        const int j = e / n, i = e % n, q = partner[i];
        if (i < q) {
          const float x = A[j][i], y = A[j][q];
          A[j][i] = cs[i] * x - sn[i] * y;
          A[j][q] = sn[i] * x + cs[i] * y;
          const float vx = V[j][i], vy = V[j][q];
          V[j][i] = cs[i] * vx - sn[i] * vy;
          V[j][q] = sn[i] * vx + cs[i] * vy;
        }
      }
      __syncthreads();
    }
  }
  for (int e = tid; e < k * k; e += nt) {
    const int i = e / k, j = e % k;
    v[base + e] = V[i][j];
    if (i == j) w[static_cast<size_t>(blockIdx.x) * k + i] = A[i][i];
  }
}

}  // namespace

extern "C" int prune_fast_jacobi_eigh_f32(const float* a, float* w, float* v, int batch, int k,
                                          int max_sweeps, float tol, void* stream) {
  if (k < 1 || k > PRUNE_FAST_JACOBI_MAX_K || batch < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (batch == 0) return 0;
  jacobi_eigh_kernel<<<batch, PRUNE_FAST_JACOBI_THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
      a, w, v, k, max_sweeps, tol);
  return static_cast<int>(cudaGetLastError());
}

extern "C" int prune_fast_jacobi_max_k() { return PRUNE_FAST_JACOBI_MAX_K; }
