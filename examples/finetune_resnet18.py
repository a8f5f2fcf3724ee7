"""The seed's recipe in Python: import a pretrained ResNet-18 from ONNX, freeze it, replace `fc`,
train with SGD, export the result to ONNX.

    python examples/finetune_resnet18.py MODEL.onnx DATA_DIR [OUT_DIR]

DATA_DIR holds train/<class>/ and val/<class>/ image folders (`finetune demo-data DIR` makes one).
"""

import sys
from pathlib import Path

import finetune as torch
from finetune import nn, optim
from finetune.data import DataLoader, ImageFolder
from finetune.data import transforms as T
from finetune.train import fit

model_path, data_dir = sys.argv[1], Path(sys.argv[2])
out_dir = Path(sys.argv[3] if len(sys.argv) > 3 else "runs/recipe")

preprocess = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize()])
train_set = ImageFolder(data_dir / "train", transform=preprocess)
val_set = ImageFolder(data_dir / "val", transform=preprocess)

model = torch.models.resnet18(weights=model_path)  # every imported weight frozen
for p in model.parameters():
    p.requires_grad = False
model.fc = nn.Linear(512, len(train_set.classes))  # the only trainable layer
optimizer = optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
print(optimizer)

history = fit(
    model,
    DataLoader(train_set, batch_size=32, shuffle=True, seed=0),
    optimizer,
    epochs=5,
    val_loader=DataLoader(val_set, batch_size=32),
    checkpoint_dir=out_dir,
)
torch.onnx.export(
    model,
    torch.zeros(1, 3, 224, 224),
    out_dir / "model.onnx",
    metadata={
        "classes": train_set.classes,
        "mean": list(T.IMAGENET_MEAN),
        "std": list(T.IMAGENET_STD),
        "input_size": 224,
    },
)
print(f"val_acc={history[-1]['val_acc']:.3f}; wrote {out_dir / 'model.onnx'}")
