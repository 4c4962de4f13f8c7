"""The seed's baseline: ResNet18 (stem + layer1..layer3) + 2-layer BiLSTM + CTC.

As in the seed, the early layers are frozen when ImageNet weights are loaded
(set ``--config.model.pretrained_path=/path/to/resnet18-f37072fd.pth``); from
scratch they are trained like the rest. Input geometry as in configs/vgg16.py.

  python train.py --config configs/resnet18.py --workdir workdirs/resnet18
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = "crohme"
  config.model.backbone = "resnet18"
  config.model.freeze_stages = 0   # 2 with ImageNet weights: stem + layer1, as the seed
  config.train.num_epochs = 50
  return config
