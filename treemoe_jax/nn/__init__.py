"""The Flax modules of the paper (section 3), for use in this cascade or in other models.

  gates      softmax, tree (eq. 9-11) and uniform gates; `tree_leaf_probs`
  experts    expert committees with a leading expert axis (`nn.vmap`), and their lowerings
  patches    shape-indexed patches around every landmark (section 3.2)
  pose       the ResNet-50 head-pose estimator with separate yaw / pitch / roll heads (3.1)
  cascade    the K-stage cascade of gated committees (3.5)
  models     the six architectures from one config; `models.forward`, the inference forward
  routing    dense, top-k and greedy routing at inference (4.4.3-4.4.4)
  pretrained ImageNet ResNet-50 weights for the pose trunk
"""
