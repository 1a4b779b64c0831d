//! AdamW (decoupled weight decay, PyTorch's update order), the warm-up + cosine learning
//! rate schedule (transformers' `get_cosine_schedule_with_warmup`), and global-norm
//! gradient clipping, over a list of f32 parameter tensors.

use tch::{Kind, Tensor};

/// AdamW state: first and second moments per parameter, and the steps taken.
#[derive(Debug)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub steps: usize,
}

impl AdamW {
    pub fn new(params: &[Tensor], weight_decay: f64) -> AdamW {
        let zeros = || params.iter().map(Tensor::zeros_like).collect::<Vec<_>>();
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, m: zeros(), v: zeros(), steps: 0 }
    }

    /// One update of `params` from their `.grad()` at learning rate `lr`:
    /// `p ← p(1 − lr·wd) − lr·m̂/(√v̂ + ε)`.
    pub fn step(&mut self, params: &[Tensor], lr: f64) {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let bias1 = 1.0 - self.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - self.beta2.powi(self.steps as i32);
        for ((p, m), v) in params.iter().zip(&mut self.m).zip(&mut self.v) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let mut p = p.shallow_clone();
            if self.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = m.g_mul_scalar_(self.beta1).g_add_(&(&g * (1.0 - self.beta1)));
            let _ = v.g_mul_scalar_(self.beta2).g_add_(&(&g * &g * (1.0 - self.beta2)));
            let denom = v.sqrt() / bias2.sqrt() + self.eps;
            let _ = p.g_sub_(&(&*m / denom * (lr / bias1)));
        }
    }
}

/// The learning rate for optimizer step `done` (steps already taken, 0-based) of `total`:
/// linear warm-up from 0 over `warmup` steps, then cosine decay to 0.
pub fn cosine_lr(peak: f64, done: usize, warmup: usize, total: usize) -> f64 {
    if done < warmup {
        return peak * done as f64 / warmup.max(1) as f64;
    }
    let progress = (done - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// The global L2 norm of the gradients; when it exceeds `max_norm` (> 0) every gradient
/// is scaled by `max_norm / (norm + 1e-6)` (PyTorch's `clip_grad_norm_`). Returns the
/// norm before clipping.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return 0.0;
    }
    let squares: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float)).collect();
    let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[]);
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for g in &grads {
            let _ = g.shallow_clone().g_mul_scalar_(factor);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let lrs: Vec<f64> = (0..10).map(|s| cosine_lr(1.0, s, 2, 10)).collect();
        assert_eq!(lrs[0], 0.0);
        assert_eq!(lrs[1], 0.5);
        assert_eq!(lrs[2], 1.0);
        assert!(lrs.windows(2).skip(2).all(|w| w[1] < w[0]));
        assert!((cosine_lr(1.0, 6, 2, 10) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn adamw_matches_a_hand_computed_first_step() {
        // step 1: m̂ = g, v̂ = g², so p ← p(1 − lr·wd) − lr·g/(|g| + ε)
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let loss = (&p * Tensor::from_slice(&[3.0f32, 0.5])).sum(Kind::Float);
        loss.backward();
        let mut opt = AdamW::new(std::slice::from_ref(&p), 0.1);
        opt.step(std::slice::from_ref(&p), 0.01);
        let got: Vec<f32> = Vec::try_from(p.detach()).unwrap();
        let expect = [1.0 * (1.0 - 0.001) - 0.01 * 3.0 / (3.0 + 1e-8), -2.0 * (1.0 - 0.001) - 0.01 * 0.5 / (0.5 + 1e-8)];
        for (g, e) in got.iter().zip(expect) {
            assert!((f64::from(*g) - e).abs() < 1e-6, "{got:?} vs {expect:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        let norm = clip_grad_norm(std::slice::from_ref(&p), 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let g: Vec<f32> = Vec::try_from(p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5, "{g:?}");
    }
}
