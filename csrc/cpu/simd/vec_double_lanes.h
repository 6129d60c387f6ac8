// float64 activations, lane by lane through libm: the float64 path is the
// accurate one (agrees with the reference to ~1e-15), so it is not
// approximated. Included inside an ISA namespace after VecD is defined.
FL_INLINE VecD act_sigmoid(VecD x) {
  alignas(64) double lanes[VecD::width];
  x.store(lanes);
  for (int l = 0; l < VecD::width; ++l) lanes[l] = 1.0 / (1.0 + std::exp(-lanes[l]));
  return VecD::load(lanes);
}
FL_INLINE VecD act_tanh(VecD x) {
  alignas(64) double lanes[VecD::width];
  x.store(lanes);
  for (int l = 0; l < VecD::width; ++l) lanes[l] = std::tanh(lanes[l]);
  return VecD::load(lanes);
}
